"""Incremental growth: cold build vs rerun after adding 5% cards, in one run on one generated dataset.

Measures, on a temp copy of the template driven by the real dvc CLI:
  * wall time of `dvc repro` of the infer stages (fetch + preprocess + infer; one dvc call,
    per-stage split from when dvc starts each stage), cold (empty shard store) vs after
    `synth.n_cards` grows by --growth;
  * bytes `dvc push` adds to a local remote, cold vs rerun (remote directory size delta);
  * a floor: the same stages forced with every shard reused (process start-up, DVC hashing,
    fetch re-reading every source file), which no amount of reuse removes.
Generating the dataset (synth) is the "source" and is not timed; the demo models are
fitted once on random data and added with `dvc add`, so growth changes no model.

    PYTHONPATH=src python bench/incremental.py --cards 600
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.e2e import build_record, env, make_project, run, set_param, tree_size, use_own_models  # noqa: E402

STAGES = ("fetch", "preprocess@pad_nn", "preprocess@thumb64", "infer@tflite_cnn", "infer@torch_cnn")
LAYERS = {
    "preprocess@pad_nn": "data/preprocessed/pad_nn",
    "preprocess@thumb64": "data/preprocessed/thumb64",
    "infer@tflite_cnn": "data/predictions/tflite_cnn",
    "infer@torch_cnn": "data/predictions/torch_cnn",
}


def timed_repro(root: Path, *args: str) -> dict[str, float]:
    """Seconds per stage of one `dvc repro` call (from when dvc starts a stage to the next), plus "dvc"
    for the rest (start-up, hashing, committing outputs to the cache)."""
    started = time.monotonic()
    child = subprocess.Popen(["dvc", "repro", *args], cwd=root, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    marks = []
    for line in child.stdout:
        if line.startswith("Running stage '"):
            marks.append((line.split("'")[1], time.monotonic()))
    if child.wait() != 0:
        raise SystemExit(f"dvc repro {' '.join(args)} failed")
    ended = time.monotonic()
    seconds = {stage: (marks[i + 1][1] if i + 1 < len(marks) else ended) - at for i, (stage, at) in enumerate(marks)}
    seconds["dvc"] = (ended - started) - sum(seconds.values())
    return seconds


def stage_times(seconds: dict[str, float]) -> str:
    """'12.3 s  fetch 4.0  preprocess@pad_nn 5.1 …': the total, then each stage."""
    return f"{sum(seconds.values()):7.1f} s  " + "  ".join(f"{s} {t:.1f}" for s, t in seconds.items())


def show(label: str, seconds: dict[str, float]) -> None:
    print(f"{label} {stage_times(seconds)}", flush=True)


def pushed_bytes(root: Path, remote: Path | None) -> int:
    """Bytes `dvc push` adds to the remote; without a remote, what DVC's cache gained since the
    last call, which is what a push would upload to a remote kept in sync."""
    if remote is None:
        return tree_size(root / ".dvc/cache")[0]
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
    parser.add_argument("--shard-bytes", type=int, default=None, help="fetch.shard_bytes (default: params.yaml's)")
    parser.add_argument("--link", choices=("copy", "hardlink"), default=None,
                        help="store.link (default: params.yaml's); hardlink also sets DVC's cache.type hardlink")
    parser.add_argument("--no-push", action="store_true",
                        help="count DVC cache growth instead of pushing (at 8,001 cards a local remote doubles the disk)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/incremental")
    args = parser.parse_args()
    grown = round(args.cards * (1 + args.growth))
    shutil.rmtree(args.out, ignore_errors=True)
    template = yaml.safe_load((REPO / "params.yaml").read_text())
    shard_bytes = args.shard_bytes or template["fetch"]["shard_bytes"]
    overrides = {"synth": {"n_cards": args.cards}, "fetch": {"shard_bytes": shard_bytes}}
    if args.link:
        overrides["store"] = {"link": args.link}
    root = make_project(args.out / "project", overrides)
    if args.link == "hardlink":  # outputs, DVC's cache and the store share one copy of each shard
        run(root, "dvc", "config", "cache.type", "hardlink")
    remote = None if args.no_push else args.out / "remote"
    if remote is not None:
        run(root, "dvc", "remote", "add", "-d", "local", str(remote))
    use_own_models(root)
    link = args.link or template["store"]["link"]
    print(f"dataset: {args.cards} → {grown} cards, fetch.shard_bytes {shard_bytes}, store.link {link}; {root}", flush=True)

    targets = [stage for stage in STAGES if stage.startswith("infer@")]
    run(root, "dvc", "repro", "synth")
    cold = timed_repro(root, *targets)
    cold_bytes = pushed_bytes(root, remote)
    show("cold: ", cold)

    set_param(root, "synth.n_cards", grown)
    run(root, "dvc", "repro", "synth")
    rerun = timed_repro(root, *targets)
    rerun_bytes = pushed_bytes(root, remote) - (cold_bytes if remote is None else 0)
    show("rerun:", rerun)
    print(f"       recomputed: {counts_line(root)}")

    floor = timed_repro(root, "-f", "-s", *STAGES)
    show("floor:", floor)
    print("       (floor = the same stages forced with every shard reused: start-up, hashing, fetch re-reading)")
    print(f"time  rerun / cold = {sum(rerun.values()) / sum(cold.values()):.3f}  (goal ≤ 0.06)")
    print(f"push  rerun / cold = {rerun_bytes / cold_bytes:.3f}  ({rerun_bytes / 1e6:.1f} MB of {cold_bytes / 1e6:.1f} MB; goal ≤ 0.06)")
    work = sum(rerun.values()) - sum(floor.values())
    print(f"rerun minus floor = {work:.1f} s of new work ({work / sum(cold.values()):.3f} of cold)")


if __name__ == "__main__":
    main()
