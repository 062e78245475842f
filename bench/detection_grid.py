"""Seed A's headline, measured side by side in one run: a detection corruption grid on the embedded
shapes data, 5,000 images × 5 corruption types × 5 severities (COCO-C protocol).

One project (the template + its detection profile, under bench/out/detection_grid) driven by the
real dvc CLI:

  0. prepare (not timed as the grid): synth, fetch, preprocess and train the demo detector;
  1. cold grid: `dvc repro detection/dvc.yaml` — infer (clean, once), postprocess, evaluate, grid,
     robustness, report — against the naive loop (bench/_naive_detection.py: every cell runs the
     clean baseline again plus its corrupted pass, nothing stored): forward passes and wall time;
  2. `nms_iou` changed on the full grid: forward passes (0) and time / the cold grid's (goal ≤ 0.05), and
     time / the same post-processing + scoring timed alone in one plain process (bench/_rescore_detection.py,
     goal ≤ 1.2×);
  3. one more corruption type: which cells compute (goal: its 5 only);
  4. the detections layer's I/O against numpy with equal durability (bench/ragged.py), and the cache's
     cost as a share of the grid's inference time (bench/_stage_timer: clocks around the cache's
     functions inside the stage processes, plus DVC's own time around each stage).

    make bench-detection                                   # full size, ~21 min on 2 cores; writes bench/RESULTS.md
    PYTHONPATH=src python bench/detection_grid.py --images 200 --train 60 --no-results   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import yaml  # noqa: E402
from incremental import timed_repro  # noqa: E402

from tests.e2e import REPO as TEMPLATE  # noqa: E402
from tests.e2e import make_project, run, set_param  # noqa: E402

PROFILE = "dvc.yaml"  # run in detection/: the detection profile is its own DVC project
MODEL = "shapes_centernet"
TYPES = ["gaussian_noise", "defocus_blur", "fog", "jpeg", "contrast"]  # one per ImageNet-C family, + contrast
ADDED_TYPE = "brightness"
SEVERITIES = [1, 2, 3, 4, 5]
SECTION_START, SECTION_END = "<!-- detection-grid:start -->", "<!-- detection-grid:end -->"


def prepare(root: Path, images: int, train_images: int) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    project = make_project(root)
    shutil.copytree(TEMPLATE / "detection", project / "detection", symlinks=True,  # detection/src → ../src
                    ignore=shutil.ignore_patterns("data", "*.pt2", "tmp", "cache", "config.local"))
    det = project / "detection"
    params = yaml.safe_load((det / "params.yaml").read_text())
    params["synth"].update(n_val=images, n_train=train_images)
    params["grid"].update(types=TYPES, severities=SEVERITIES)
    (det / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "bench params")
    return project


def stage_env(timings: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(BENCH / "_stage_timer"), environment.get("PYTHONPATH", "")])
    environment["BENCH_STAGE_TIMINGS"] = str(timings)
    environment["TQDM_DISABLE"] = "1"
    return environment


def repro(project: Path, timings: Path, log: list[str], label: str) -> tuple[dict[str, float], list[dict]]:
    """Seconds per stage of one timed `dvc repro`, and the stage processes' own clocks."""
    timings.unlink(missing_ok=True)
    saved = dict(os.environ)
    os.environ.update(stage_env(timings))  # timed_repro starts dvc with this process's environment
    try:
        seconds = timed_repro(project / "detection", PROFILE)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    clocks = [json.loads(line) for line in timings.read_text().splitlines()] if timings.exists() else []
    total = sum(seconds.values())
    say(log, f"{label}: `dvc repro` {total:.1f} s: " + ", ".join(f"{s.split(':')[-1]} {t:.1f}" for s, t in seconds.items()))
    return seconds, clocks


def say(log: list[str], line: str) -> None:
    log.append(line)
    print("    " + line, flush=True)


def cells_computed(project: Path) -> list[str]:
    from tests.e2e import build_record

    computed = []
    for cell in sorted((project / "detection/data/grid" / MODEL).iterdir()):
        record = build_record(project, f"detection/data/grid/{MODEL}/{cell.name}")
        if record["counts"]["forward_passes"]:
            computed.append(cell.name)
    return computed


def layer_passes(project: Path) -> tuple[int, int]:
    """(clean forward passes in infer's layer index, perturbed ones summed over the cells' indexes)."""
    from evalstack.detection.candidates import open_candidates

    det = project / "detection/data"
    clean = open_candidates(det / "candidates" / MODEL).index.stats["forward_passes"]
    perturbed = sum(open_candidates(cell).index.stats["forward_passes"] for cell in (det / "grid" / MODEL).iterdir())
    return int(clean), int(perturbed)


def breakdown(clocks: list[dict], seconds: dict[str, float], stage: str) -> dict[str, float]:
    """Where one stage's time went: its process's clocks, and DVC's own time around it."""
    clock = next(c for c in clocks if c["script"] == f"{stage}.py")
    span = next(t for s, t in seconds.items() if s.split(":")[-1] == f"{stage}@{MODEL}")
    parts = dict(clock["seconds"])
    parts["dvc around the stage (start-up, hashing and caching its outputs)"] = max(span - clock["wall"], 0.0)
    parts["stage process, total"] = clock["wall"]
    return parts


def rescore_alone(project: Path, out: Path) -> dict:
    """D1's second baseline: the post-processing + scoring an NMS change calls for, in one plain process.
    Its figures must be the stages' (the same work), else the comparison means nothing."""
    run(project, sys.executable, str(BENCH / "_rescore_detection.py"), str(project / "detection"), MODEL, str(out))
    alone = json.loads(out.read_text())
    details = json.loads((project / f"detection/reports/robustness/{MODEL}.json").read_text())
    for cell in details["cells"]:
        mine = alone["cells"][f"{cell['kind']}-{cell['severity']}"]
        if (mine["mAP"], mine["mAP50"], mine["consistency"]) != (cell["mAP"], cell["mAP50"], cell["consistency"]):
            raise SystemExit(f"the plain rescoring differs from the robustness stage on {cell['kind']}-{cell['severity']}")
    if alone["clean"]["mAP"] != details["P_clean"]:
        raise SystemExit("the plain rescoring's clean mAP differs from the robustness stage's")
    return alone


def ragged_lines() -> list[str]:
    result = subprocess.run([sys.executable, str(BENCH / "ragged.py")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
    return result.stdout.strip().splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="val images: the grid's N")
    parser.add_argument("--train", type=int, default=1200, help="train images for the demo detector")
    parser.add_argument("--out", type=Path, default=BENCH / "out/detection_grid")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    log: list[str] = []
    timings = args.out / "stage_timings.jsonl"
    project = prepare(args.out / "project", args.images, args.train)
    n, p, i = args.images, len(TYPES), len(SEVERITIES)
    say(log, f"{n} val images × {p} types × {i} severities ({', '.join(TYPES)}); demo detector trained on {args.train}")

    prep_started = time.monotonic()
    run(project / "detection", "dvc", "repro", f"{PROFILE}:train@{MODEL}")
    say(log, f"prepared (synth, fetch, preprocess, train; not part of the grid) in {time.monotonic() - prep_started:.0f} s")

    cold, cold_clocks = repro(project, timings, log, "cold grid")
    clean, perturbed = layer_passes(project)
    say(log, f"forward passes recorded in the layer indexes: clean {clean}, perturbed {perturbed}, "
             f"total {clean + perturbed} (expected {n} + {n * p * i})")
    grid_parts = breakdown(cold_clocks, cold, "grid")
    say(log, "grid stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in grid_parts.items()))
    robustness_parts = breakdown(cold_clocks, cold, "robustness")
    say(log, "robustness stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in robustness_parts.items()))
    details = json.loads((project / f"detection/reports/robustness/{MODEL}.json").read_text())
    say(log, f"P_clean {details['P_clean']:.4f}, mPC {details['mPC']:.4f}, rPC {details['rPC'] or 0:.4f}")

    naive_out = args.out / "naive.json"
    naive_started = time.monotonic()
    run(project, sys.executable, str(BENCH / "_naive_detection.py"), str(project / "detection"), str(naive_out))
    naive = json.loads(naive_out.read_text())
    naive_wall = time.monotonic() - naive_started
    grid_cells = {f"{c['kind']}-{c['severity']}": c for c in details["cells"]}
    differences = [abs(naive["cells"][name]["mAP"] - grid_cells[name]["mAP"]) for name in grid_cells]
    cold_total = sum(cold.values())
    say(log, f"naive loop: {naive['forward_passes']} forward passes in {naive_wall:.1f} s (its own clock "
             f"{naive['seconds']:.1f} s); largest |ΔmAP| against the grid's cells {max(differences):.2g}")
    say(log, f"naive / `dvc repro`: forward passes {naive['forward_passes']} / {clean + perturbed} = "
             f"{naive['forward_passes'] / (clean + perturbed):.2f}×; wall time {naive_wall:.1f} / {cold_total:.1f} s = "
             f"{naive_wall / cold_total:.2f}×")

    set_param(project / "detection", f"models.{MODEL}.nms_iou", 0.6)
    nms, nms_clocks = repro(project, timings, log, "nms_iou 0.5 → 0.6")
    ran = sorted(s.split(":")[-1] for s in nms)
    nms_total = sum(nms.values())
    model_ran = [c["stage"] for c in nms_clocks if c["seconds"].get("model forward")]
    say(log, f"nms_iou change: stages {', '.join(s for s in ran if s != 'dvc')}; stages that ran the model: "
             f"{model_ran or 'none'}; {nms_total:.1f} s = {nms_total / cold_total:.3f} of the cold grid")
    alone = rescore_alone(project, args.out / "alone.json")
    say(log, f"the same post-processing + scoring timed alone (bench/_rescore_detection.py: {alone['sets']} sets, "
             f"{alone['images']} images, one process, no cache, no DVC; its figures equal the stages'): "
             f"{alone['seconds']:.1f} s (post-processing {alone['postprocess_seconds']:.1f} s, scoring "
             f"{alone['scoring_seconds']:.1f} s); `dvc repro` / alone = {nms_total / alone['seconds']:.2f}×")

    set_param(project / "detection", "grid.types", [*TYPES, ADDED_TYPE])
    grown, grown_clocks = repro(project, timings, log, f"+ {ADDED_TYPE}")
    computed = cells_computed(project)
    _, perturbed_after = layer_passes(project)
    grid_clock = next(c for c in grown_clocks if c["script"] == "grid.py")
    say(log, f"one more type: cells computed {computed}; grid stage {grid_clock['wall']:.1f} s, model forward "
             f"{grid_clock['seconds'].get('model forward', 0):.1f} s; perturbed passes in the indexes now {perturbed_after}")

    io_lines = ragged_lines()
    for line in io_lines:
        say(log, "ragged.py: " + line)
    cache = sum(v for k, v in grid_parts.items() if k.startswith("cache:"))
    inference = grid_parts.get("model forward", 0) + grid_parts.get("decode candidates", 0)
    dvc_side = grid_parts["dvc around the stage (start-up, hashing and caching its outputs)"]
    say(log, f"cache cost in the cold grid stage: {cache:.1f} s in the stage + {dvc_side:.1f} s of DVC around it, "
             f"against {inference:.1f} s of inference (forward + decoding candidates): {cache / inference:.3f} "
             f"({(cache + dvc_side) / inference:.3f} with DVC's part)")
    minutes = (time.monotonic() - started) / 60
    say(log, f"whole run {minutes:.1f} min")
    figures = {
        "n": n, "p": p, "i": i, "clean": clean, "perturbed": perturbed, "naive_passes": naive["forward_passes"],
        "naive_seconds": naive_wall, "cold_seconds": cold_total, "nms_seconds": nms_total, "nms_model_ran": model_ran,
        "computed": computed, "added": ADDED_TYPE, "cache": cache, "dvc_side": dvc_side, "inference": inference,
        "io": io_lines, "max_dmap": max(differences), "minutes": minutes, "alone_seconds": alone["seconds"],
    }
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1))
    if not args.no_results:
        write_section(BENCH / "RESULTS.md", figures, log)


def write_section(path: Path, f: dict, log: list[str]) -> None:
    durable = next((line for line in f["io"] if "equal durability" in line), "")
    ratio = float(re.search(r"ratio ([0-9.]+)×", durable).group(1)) if durable else float("nan")
    nms_ratio = f["nms_seconds"] / f["cold_seconds"]
    integrity = next((line for line in f["io"] if line.startswith("D2:")), "")
    d2 = float(re.search(r"ratio ([0-9.]+)×", integrity).group(1)) if integrity else float("nan")
    expected_cells = sorted(f"{f['added']}-{s}" for s in SEVERITIES)
    rows = [
        ("forward passes, naive loop / `dvc repro` of the grid", f"{f['naive_passes']:,} / {f['clean'] + f['perturbed']:,} "
         f"({f['clean']:,} clean + {f['perturbed']:,} perturbed)", f"{2 * f['n'] * f['p'] * f['i']:,} / "
         f"{f['n'] + f['n'] * f['p'] * f['i']:,}", f['naive_passes'] == 2 * f['n'] * f['p'] * f['i']
         and f['clean'] == f['n'] and f['perturbed'] == f['n'] * f['p'] * f['i']),
        ("wall time, naive loop / `dvc repro` of the grid (cold)",
         f"{f['naive_seconds'] / f['cold_seconds']:.2f}× ({f['naive_seconds']:.0f} s / {f['cold_seconds']:.0f} s)",
         "measured", None),
        ("`nms_iou` 0.5 → 0.6 on the full grid: forward passes; time / cold grid",
         f"{'0' if not f['nms_model_ran'] else 'model ran!'}; {nms_ratio:.3f} ({f['nms_seconds']:.0f} s)", "0; ≤ 0.05",
         not f["nms_model_ran"] and nms_ratio <= 0.05),
        ("`nms_iou` change: `dvc repro` / the same post-processing + scoring timed alone (one plain process)",
         f"{f['nms_seconds'] / f['alone_seconds']:.2f}× ({f['nms_seconds']:.1f} s / {f['alone_seconds']:.1f} s)",
         "≤ 1.2×", f["nms_seconds"] / f["alone_seconds"] <= 1.2),
        (f"one more type ({f['added']}): cells computed", ", ".join(f["computed"]), "its 5 cells only",
         f["computed"] == expected_cells),
        ("detections layer write + read / np.save + fsync per file + np.load, no hashing (20,000 images × 15 boxes)",
         f"{ratio:.2f}×", "≤ 2× (the old baseline)", ratio <= 2),
        ("D2: the same with equal integrity: np.save + fsync + sha256 per file / np.load + sha256",
         f"{d2:.2f}×", "≤ 1.5×", d2 <= 1.5),
        ("the cache's cost / the grid's inference time (cold grid stage)",
         f"{f['cache'] / f['inference']:.3f} ({(f['cache'] + f['dvc_side']) / f['inference']:.3f} with DVC's hashing)",
         "measured", None),
    ]
    verdict = lambda ok: "measured" if ok is None else ("met" if ok else "MISSED")  # noqa: E731
    lines = [SECTION_START, "## Detection corruption grid (seed A's headline)", "",
             f"`make bench-detection` (= `PYTHONPATH=src python bench/detection_grid.py`), run on "
             f"{time.strftime('%Y-%m-%d')} at commit {git_commit()}: {f['n']:,} val images of the embedded shapes "
             f"data × {f['p']} corruption types × {f['i']} severities, whole run {f['minutes']:.0f} min.", "",
             "| what | measured | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {what} | {value} | {goal} | {verdict(ok)} |" for what, value, goal, ok in rows]
    lines += ["", f"The naive loop's per-cell mAP equals the grid's to {f['max_dmap']:.2g} (largest |Δ|; the framework "
              "rounds differently in other batch compositions).", "", "```", *log, "```", SECTION_END]
    put_section(path, SECTION_START, SECTION_END, lines)


def put_section(path: Path, start: str, end: str, lines: list[str]) -> None:
    """Replace the section between the markers in bench/RESULTS.md (`lines` include them), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in text:
        text = text[: text.index(start)] + "\n".join(lines) + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    path.write_text(text)


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or "?"


if __name__ == "__main__":
    main()
