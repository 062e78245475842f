"""P10's second goal, each stage ≤ 1.2× a plain script doing the same work, side by side in one run.

A project like P10's (bench/_full.py: the template's own params at `--cards` cards, hardlinked store and DVC
cache) is built up to what the timed stages read (`dvc repro infer@tflite_cnn preprocess@thumb64
preprocess@pad_regions`; the demo's synthesis and training are not timed). Then, for each of P10's heaviest
stages — fetch, the three preprocess pipelines, infer@tflite_cnn and robustness@tflite_cnn, about 95 % of P10
without the demo — three runs in turn, each with its input read into the page cache first (as a cold
`dvc repro` finds its upstream's fresh output):
* the stage's own command (the one dvc.yaml runs) with a shard store holding no result and a new output
  directory: what a cold `dvc repro` runs; its last line must say it computed everything. The store holds the
  project's hash stamps, as the store a cold `dvc repro` shares between its stages does (since 2026-12-08; before,
  each stage hashed all its inputs before it started, which a cold `dvc repro` does not);
* bench/_plain.py's script for the same work, reading what the plain script before it wrote;
* the same plain script with the stages' integrity checks (`--integrity`: the sha256 of every file it reads and
  writes), the baseline D2 is stated against.
Which goes first rotates from stage to stage and from repeat to repeat. Before a time is compared the results
must be equal: every card's sha256 (fetch), every tensor (preprocess), every output's argmax (infer), every
cell's accuracy (robustness). Wall time and the CPU time (user + system) of every process each run started are
printed.

    PYTHONPATH=src python bench/p10_plain.py [--cards 8001] [--repeats 1] [--keep | --project DIR]
                                             [--until fetch|preprocess|infer|robustness]

Time: ~60 min at 8,001 cards (the build ~13 min). Disk: the source, the raw layer and the plain script's copy
of it are ~11 GB each, and fetch's own output adds another ~11 GB while it is compared: ~55 GB at the peak.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import _plain  # noqa: E402
from _full import full_project  # noqa: E402

from evalstack.core.layers import Layer  # noqa: E402
from tests.e2e import run  # noqa: E402

MODEL = "tflite_cnn"  # the grid's reference model, whose grid is most of P10
GOAL = 1.2
SIDES = ("evalstack", "plain", "plain + integrity")


@dataclass
class Pair:
    stage: str
    wall: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {side: [] for side in SIDES})  # user + system

    def best(self, side: str) -> float:
        return min(self.wall[side])

    def ratio(self, side: str) -> float:
        return self.best("evalstack") / self.best(side)


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the processes it ran: user + system, pool workers included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    action()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def page_in(path: Path) -> None:
    """Read every file under `path` once (into the page cache)."""
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            with open(file, "rb") as handle:
                while handle.read(1 << 23):
                    pass


def stage_params(project: Path, name: str) -> Path:
    """params.yaml with a shard store of its own that holds no result: the stage computes every shard, as in a
    cold build. It holds the hash stamps of the stage's inputs, as a cold `dvc repro` finds them: there the
    upstream stage put its shards into the store and remembered their sha256, so the stage reads each input in
    full beside its computation (`_UpstreamReads`) instead of hashing all of them before it starts."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    stamps = project / params["store"]["dir"] / "stamps"
    params["store"]["dir"] = f".bench-store-{name}"
    shutil.rmtree(project / params["store"]["dir"], ignore_errors=True)
    if stamps.is_dir():
        shutil.copytree(stamps, project / params["store"]["dir"] / "stamps")
    path = project / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def clean_up(project: Path, name: str, *outputs: Path) -> None:
    for path in (project / f".bench-store-{name}", project / f"params-{name}.yaml", *outputs):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def by_key(keys: np.ndarray) -> np.ndarray:
    """The rows of `keys` in sorted key order (the layer lists cards in its own order, the plain file in the
    registry's)."""
    return np.argsort(np.asarray(keys).astype("S64"), kind="stable")


def layer_keys(directory: Path) -> np.ndarray:
    return np.asarray(Layer.open(directory).item_keys()).astype("S64")


def layer_column(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return layer_keys(directory), Layer.open(directory).column(name)


def computed_everything(said: str) -> bool:
    """From a stage's last line: it computed every shard or cell (fetch: read every card from the source)."""
    cells = re.search(r": (\d+) cells, (\d+) computed", said)
    if cells:
        return cells[1] == cells[2]
    items = re.match(r"raw layer: (\d+) items", said)
    if items:
        return f"read_from_source {items[1]}," in said
    return "reused 0 from the store" in said


def check_equal(what: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        raise AssertionError(f"{what}: evalstack's stage and the plain script disagree")


UNTIL = ("fetch", "preprocess", "infer", "robustness")  # the stages in order; --until stops after one


def measure(project: Path, plain_dir: Path, repeat: int, pairs: dict[str, Pair], until: str = UNTIL[-1]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    raw_file = plain_dir / _plain.RAW_FILE
    scratch = project / "bench-out"
    shutil.rmtree(scratch, ignore_errors=True)  # a stage reuses what its output directory already holds
    turn = repeat  # which side goes first: rotates from stage to stage and from repeat to repeat

    def side_by_side(stage: str, ours: Callable[[], None], plain: Callable[[bool], Callable[[], None]],
                     inputs: tuple[Path, Path]) -> None:
        """`inputs`: what the stage reads and what the plain script reads, put in the page cache before each
        side runs, as a stage finds its upstream's fresh output in a cold `dvc repro` (2 × 11 GB do not fit
        at 8,001 cards: otherwise the side that runs second would find its input cached more often)."""
        nonlocal turn
        pair = pairs.setdefault(stage, Pair(stage))
        sides = dict(zip(SIDES, (ours, plain(False), plain(True))))
        for side in SIDES[turn % 3:] + SIDES[:turn % 3]:
            page_in(inputs[0] if side == "evalstack" else inputs[1])
            wall, cpu = timed(sides[side])
            pair.wall[side].append(wall)
            pair.cpu[side].append(cpu)
        if not computed_everything(said[-1]):
            raise AssertionError(f"{stage} reused earlier work, so it is not a cold run: {said[-1]}")
        turn += 1
        print(f"  {stage}: " + ", ".join(f"{side} {pair.wall[side][-1]:.1f} s (CPU {pair.cpu[side][-1]:.1f} s)"
                                         for side in SIDES) + f" ({said[-1]})", flush=True)

    said: list[str] = []  # the stage commands' last lines
    heard: list[str] = []  # the plain scripts' output

    def command(*args: str) -> Callable[[], None]:
        return lambda: said.append(run(project, sys.executable, *args).stdout.strip().splitlines()[-1])

    def plain(*args: str) -> Callable[[bool], Callable[[], None]]:
        return lambda integrity: lambda: heard.append(run(
            project, sys.executable, str(BENCH / "_plain.py"), args[0], str(project), str(plain_dir), *args[1:],
            *(["--integrity"] if integrity else [])).stdout)

    # fetch
    name = f"fetch-{repeat}"
    config = stage_params(project, name)
    side_by_side("fetch", command("stages/fetch.py", "--out", str(scratch / "raw"), "--report",
                                  str(scratch / "fetch_report.json"), "--params", config.name),
                 plain("fetch"), (project / "data/source", project / "data/source"))
    ours_keys = layer_keys(scratch / "raw")
    with h5py.File(raw_file, "r") as handle:
        plain_keys = handle["item_key"][:]
    check_equal("fetch: the cards' sha256", np.sort(ours_keys), np.sort(plain_keys))
    clean_up(project, name, scratch / "raw", scratch / "fetch_report.json")
    if until == "fetch":
        return

    # preprocess, each pipeline
    for pipeline in params["preprocess"]["pipelines"]:
        name = f"preprocess-{pipeline}-{repeat}"
        config = stage_params(project, name)
        out = plain_dir / f"{pipeline}.npy"
        side_by_side(f"preprocess@{pipeline}",
                     command("stages/preprocess.py", "--pipeline", pipeline, "--raw", "data/raw", "--out",
                             str(scratch / pipeline), "--params", config.name),
                     plain("preprocess", "--pipeline", pipeline), (project / "data/raw", raw_file))
        keys, tensors = layer_column(scratch / pipeline, "x")
        check_equal(f"preprocess@{pipeline}: the tensors", tensors[by_key(keys)],
                    np.load(out, mmap_mode="r")[by_key(plain_keys)])
        clean_up(project, name, scratch / pipeline)
    if until == "preprocess":
        return

    entry = params["models"][MODEL]
    tensors = plain_dir / f"{entry['pipeline']}.npy"

    # infer
    name = f"infer-{repeat}"
    config = stage_params(project, name)
    out = plain_dir / f"{MODEL}.npy"
    upstream = f"data/preprocessed/{entry['pipeline']}"
    side_by_side(f"infer@{MODEL}",
                 command("stages/infer.py", "--model", MODEL, "--preprocessed", upstream,
                         "--out", str(scratch / "predictions"), "--params", config.name),
                 plain("infer", "--model", MODEL), (project / upstream, tensors))
    keys, outputs = layer_column(scratch / "predictions", "logits")
    check_equal(f"infer@{MODEL}: the outputs' argmax", np.argmax(outputs[by_key(keys)], axis=1),
                np.argmax(np.load(out)[by_key(plain_keys)], axis=1))
    clean_up(project, name, scratch / "predictions")
    if until == "infer":
        return

    # robustness
    name = f"robustness-{repeat}"
    config = stage_params(project, name)
    summary = scratch / "robustness.json"
    side_by_side(f"robustness@{MODEL}",
                 command("stages/robustness.py", "--model", MODEL, "--raw", "data/raw", "--preprocessed",
                         upstream, "--predictions", f"data/predictions/{MODEL}",
                         "--out", str(scratch / "grid"), "--summary", str(summary), "--params", config.name),
                 plain("robustness", "--model", MODEL), (project / upstream, tensors))
    cells = {(cell["type"], cell["severity"]): cell["accuracy"] for cell in json.loads(summary.read_text())["cells"]}
    for output in heard[-2:]:  # the plain script, with and without the checks
        accuracies = {(kind, severity): accuracy for kind, severity, accuracy in json.loads(output)}
        if cells != accuracies:
            raise AssertionError(f"robustness@{MODEL}: the cells' accuracy differ: {cells} against {accuracies}")
    clean_up(project, name, scratch / "grid", summary, plain_dir / "grid")


def verdict(ratio: float) -> str:
    return f"{ratio:.2f} ({'met' if ratio <= GOAL else 'MISSED'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=8001)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scratch", type=Path, default=BENCH / "out/p10_plain")
    parser.add_argument("--project", type=Path, help="a project this script built before (with --keep)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--until", choices=UNTIL, default=UNTIL[-1],
                        help="measure the stages up to this one only (each needs the plain outputs before it)")
    args = parser.parse_args()
    if args.project is None:
        shutil.rmtree(args.scratch, ignore_errors=True)
        project = full_project(args.scratch / f"full{args.cards}", args.cards, tiny=False)
        started = time.monotonic()
        run(project, "dvc", "repro", f"infer@{MODEL}", "preprocess@thumb64", "preprocess@pad_regions")
        print(f"built {project} in {time.monotonic() - started:.0f} s (not timed)", flush=True)
    else:
        project = args.project.resolve()
    plain_dir = project / "bench-plain"
    pairs: dict[str, Pair] = {}
    for repeat in range(args.repeats):
        measure(project, plain_dir, repeat, pairs, args.until)
    shutil.rmtree(plain_dir, ignore_errors=True)
    totals = {side: sum(pair.best(side) for pair in pairs.values()) for side in SIDES}
    print(f"\nP10, each stage against a plain script doing the same work, {args.cards} cards "
          f"(best of {args.repeats}; results equal in every run); CPU is user + system of every process:")
    print("| stage | evalstack | plain script | ratio | plain + the stages' integrity checks | ratio | "
          "CPU evalstack / plain / plain + checks |\n|---|---|---|---|---|---|---|")
    for pair in pairs.values():
        cpu = {side: min(values) for side, values in pair.cpu.items()}
        print(f"| {pair.stage} | {pair.best('evalstack'):.1f} s | {pair.best('plain'):.1f} s | "
              f"{verdict(pair.ratio('plain'))} | {pair.best('plain + integrity'):.1f} s | "
              f"{verdict(pair.ratio('plain + integrity'))} | "
              + " / ".join(f"{cpu[side]:.1f}" for side in SIDES) + " s |")
    print(f"| all {len(pairs)} | {totals['evalstack']:.1f} s | {totals['plain']:.1f} s | "
          f"{totals['evalstack'] / totals['plain']:.2f} | {totals['plain + integrity']:.1f} s | "
          f"{totals['evalstack'] / totals['plain + integrity']:.2f} | |")
    if args.keep:
        print(f"kept the project at {project}")
    elif args.project is None:
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
