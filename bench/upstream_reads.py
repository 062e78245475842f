"""A cold preprocess stage with its upstream reads before the computation or beside it, side by side.

Before a shard is computed its upstream shard is read in full (its sha256 from the bytes, e824f30). Until
this script's commit the reads ran one after another before the first shard was computed; now a thread does
them while the shards are computed, and a result is kept only once its input's read matched. This builds
the raw layer of `--cards` cards once, then runs the same cold `stages/preprocess.py` with the library of
`--base` (a git commit, checked out in a worktree) and with this checkout's, interleaved, `--runs` times
each. Every run starts with the preprocessed layer and the store's shards removed and the raw layer's
stamps kept, as in a cold `dvc repro` right after fetch; the raw layer is in the page cache for all runs.
With `--missing N`, each run has the store's results of only the last N raw shards removed instead, after one
cold run of each library filled it: a rerun after cards were added (P2), where the stage computes N shards.

    PYTHONPATH=src python bench/upstream_reads.py --base 2bb025f [--cards 2000] [--runs 3] [--pipeline pad_nn]
                                                  [--missing 11]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _full import full_project  # noqa: E402

from tests.e2e import REPO, env, run  # noqa: E402


def timed_preprocess(project: Path, src: Path, pipeline: str, missing: int) -> float:
    """Seconds of one preprocess run with the library in `src`: cold, or with `missing` shards to compute."""
    out = project / "data/preprocessed" / pipeline
    shutil.rmtree(out, ignore_errors=True)
    if missing > 0:
        _forget_last(project, missing)
    elif missing == 0:
        shutil.rmtree(project / ".evalstack/store/shards", ignore_errors=True)
    # missing < 0: the store as it is (filling it)
    environment = {**env(project), "PYTHONPATH": str(src)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "stages/preprocess.py", "--pipeline", pipeline, "--raw", "data/raw", "--out",
                    str(out.relative_to(project))], cwd=project, env=environment, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _forget_last(project: Path, shards: int) -> None:
    """Remove from the project's store every preprocessed result of the raw layer's last `shards` shards."""
    from evalstack.cache.shardstore import ShardStore, StoreConfig
    from evalstack.core.layers import Layer

    upstream = {shard.sha256 for shard in Layer.open(project / "data/raw").shards[-shards:]}
    store = ShardStore(StoreConfig(project / ".evalstack/store", 1 << 40))
    for entry in list(store.entries()):
        if entry.upstream in upstream:
            store.remove(entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit whose library reads before computing")
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pipeline", default="pad_nn")
    parser.add_argument("--missing", type=int, default=0, help="shards to compute per run (0: every shard, cold)")
    parser.add_argument("--scratch", type=Path, default=BENCH / "out/upstream_reads")
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    base = args.scratch / "base"
    run(REPO, "git", "worktree", "add", "--detach", "-q", str(base), args.base)
    try:
        project = full_project(args.scratch / "project", args.cards, tiny=False)
        started = time.perf_counter()
        run(project, "dvc", "repro", "fetch")
        print(f"{args.cards} cards fetched in {time.perf_counter() - started:.0f} s (not timed below)")
        variants = {"reads before computing": base / "src", "reads beside computing": REPO / "src"}
        times: dict[str, list[float]] = {name: [] for name in variants}
        if args.missing:  # fill the store with each library's results once
            for src in variants.values():
                timed_preprocess(project, src, args.pipeline, -1)
        for _ in range(args.runs):
            for name, src in variants.items():
                seconds = timed_preprocess(project, src, args.pipeline, args.missing)
                times[name].append(seconds)
                print(f"  {name}: {seconds:.1f} s", flush=True)
        before, beside = (statistics.median(times[name]) for name in variants)
        what = f"{args.missing} shards to compute" if args.missing else "cold"
        print(f"preprocess@{args.pipeline}, {what}, at {args.cards} cards, median of {args.runs}: reads before "
              f"computing {before:.1f} s, beside {beside:.1f} s: beside / before = {beside / before:.3f}")
    finally:
        run(REPO, "git", "worktree", "remove", "--force", str(base))
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
