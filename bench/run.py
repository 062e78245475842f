"""`make bench`: every figure measured side by side in one run, written to bench/RESULTS.md.

Runs the issue-9 figures (bench/_figures.py, bench/_scale.py) and the other bench/*.py
scripts (files starting with `_` are helpers; incremental.py is the stand-alone version of
P2 and is left out). BENCH_SCALE=full (default: P1/P2 at the real FHI2020 scale of 8,001
cards) or small (a few minutes; proves the suite end to end, its figures are not the claims).

    BENCH_SCALE=small PYTHONPATH=src python bench/run.py
    BENCH_CARDS=2000 make bench          # P1 and P2 at another dataset size

The registry of generated cards is kept in bench/out/registry between runs (only its
growth is re-rendered); delete it to measure from nothing.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _figures as fig  # noqa: E402


@dataclass(frozen=True)
class Scale:
    cards: int  # P1 and P2 at this dataset size
    shard_size: int
    p7_items: tuple[int, int]
    p8_tiny: bool  # P8 (and P3–P6, P9 on its project) with tests/e2e.py's tiny params


SCALES = {
    "full": Scale(8001, 128, (1000, 20000), False),
    "small": Scale(120, 16, (250, 1000), True),
}
SKIPPED_SCRIPTS = ("run.py", "incremental.py", "detection_grid.py")  # the last: `make bench-detection` (~2 h)
SCRIPT_TIMEOUT = 20 * 60
# Why a goal is missed when it is, from what the runs so far showed; printed beside a missed figure.
KNOWN_CAUSES = {
    "P1": "the rerun is DVC's own start-up and graph check (~0.9 s, `dvc repro` with nothing to do) plus one Python "
          "process per evaluate stage (~0.6 s each); at 8,001 cards the naive script's work is ~340 s, so ≥ 100× needs "
          "the rerun under ~3.4 s. At small sizes the naive run is short and no ratio near 100 is possible",
    "P2": "fixed per-run costs (each stage's process start-up and framework import, DVC's checks, reading the previous "
          "raw layer's metadata) do not shrink with the 5% of new work; at small sizes they dominate",
    "P2 push": "the rerun pushes the new shards, every layer index and the fetch report (which lists every card); "
               "at small sizes a shard is a large share of the data",
    "P4": "`dvc repro` builds the stage graph and checks the run-cache on top of what `dvc status` does",
    "P5": "the bytes read as fast as np.load (np.fromfile at the dataset's offset), but each shard is opened through "
          "h5py first (~0.4 ms per shard against ~1.1 ms of reading a 19 MB shard of 32 tensors); larger shards "
          "(`fetch.shard_size`) dilute it, and recording each tensor's offset in the layer index would remove it",
    "P6": "the adapter checks shapes and dtype per batch and copies the output; with tiny models the "
          "framework call is so short that this shows",
    "P7": "fetch keeps one registry row per card in memory (~1 KB each), the registry being the plan of the run",
    "P8": "training the three demo networks and the robustness grid dominate a cold run on 2 cores",
    "P9": "task and file overhead per shard; on a loaded machine the two workers also compete with other jobs",
}


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name not in SKIPPED_SCRIPTS)


def run_script(script: Path, args: list[str], scale_name: str) -> tuple[str, float]:
    environment = {**os.environ, "BENCH_SCALE": scale_name}
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, str(script), *args], env=environment, capture_output=True,
                                text=True, timeout=SCRIPT_TIMEOUT, cwd=BENCH.parent)
        output = result.stdout + (f"\n[exit {result.returncode}]\n{result.stderr[-3000:]}" if result.returncode else "")
    except subprocess.TimeoutExpired:
        output = f"[timed out after {SCRIPT_TIMEOUT} s]"
    return output, time.monotonic() - started


def safely(figures: list[fig.Figure], make, *args):
    """A figure that fails is reported as such; the others still run. Returns what `make` returned."""
    result = None
    try:
        result = make(*args)
        made = result[1] if isinstance(result, tuple) else result
        figures.extend(made if isinstance(made, list) else [made])
        for figure in made if isinstance(made, list) else [made]:
            print(format_line(figure), flush=True)
    except Exception as error:  # noqa: BLE001 - one broken figure must not lose the rest
        name = getattr(make, "__name__", "figure").split("_")[0].upper()
        figures.append(fig.Figure(name, getattr(make, "__name__", "?"), None, "", None, f"failed: {error!r}"[:400], ""))
        print(format_line(figures[-1]), flush=True)
    return result


def format_line(f: fig.Figure) -> str:
    value = "—" if f.value is None else f"{f.value:.3f}"
    return f"{f.id:3} {value:>9}  goal {f.goal:<30} {f.verdict:<13} {f.name}  [{f.detail}]"


def machine() -> list[str]:
    packages = ["dvc", "h5py", "numpy", "dask", "distributed", "torch", "ai-edge-litert", "pillow"]
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True).stdout.strip()
    return [
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}",
        f"- python {platform.python_version()}; {', '.join(versions)}",
        f"- evalstack commit {commit}",
    ]


def write_results(path: Path, scale_name: str, figures: list[fig.Figure], outputs: dict[str, str], seconds: float) -> None:
    lines = ["# Benchmark results", "", *machine(), f"- scale: BENCH_SCALE={scale_name}; whole run {seconds / 60:.1f} min", "",
             "| figure | what | value | goal | verdict | detail |", "|---|---|---|---|---|---|"]
    for f in figures:
        value = "—" if f.value is None else f"{f.value:.3f}"
        lines.append(f"| {f.id} | {f.name} | {value} | {f.goal} | {f.verdict} | {f.detail} |")
    missed = [f for f in figures if f.ok is False]
    if missed:
        lines += ["", "## Missed goals", ""]
        for f in missed:
            lines.append(f"- **{f.id}** {f.name}: {f.value:.3f} against {f.goal}. Likely cause: {KNOWN_CAUSES.get(f.id + (' push' if 'pushed' in f.name else ''), '?')}.")
    lines += ["", "## Output of each bench script", ""]
    for name, output in outputs.items():
        lines += [f"### {name}", "", "```", output.strip()[-6000:], "```", ""]
    kept = _kept_section(path)
    path.write_text("\n".join(lines) + "\n" + (f"\n{kept}\n" if kept else ""))


def _kept_section(path: Path) -> str:
    """The section `make bench-detection` wrote (its own target, too long for this run): kept as it is."""
    text = path.read_text() if path.exists() else ""
    start, end = "<!-- detection-grid:start -->", "<!-- detection-grid:end -->"
    return text[text.index(start) : text.index(end) + len(end)] if start in text and end in text else ""


def scale_run(scratch: Path, scale: Scale, scale_name: str, outputs: dict[str, str]) -> tuple[None, list[fig.Figure]]:
    import _scale

    started = time.monotonic()
    result = _scale.measure(scratch, BENCH / "out/registry", scale.cards, scale.shard_size)
    outputs[f"_scale.py, {scale.cards} cards ({time.monotonic() - started:.0f} s)"] = "\n".join(result.log)
    return None, fig.scale_figures(result, scale_name)


def main() -> None:
    scale_name = os.environ.get("BENCH_SCALE", "full")
    if scale_name not in SCALES:
        raise SystemExit(f"BENCH_SCALE={scale_name!r}: choose one of {sorted(SCALES)}")
    scale = SCALES[scale_name]
    if os.environ.get("BENCH_CARDS"):
        scale = replace(scale, cards=int(os.environ["BENCH_CARDS"]))
    os.environ["TQDM_DISABLE"] = "1"  # progress bars would bury the figures
    scratch = BENCH / "out/run"
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.monotonic()
    figures: list[fig.Figure] = []
    outputs: dict[str, str] = {}
    print(f"BENCH_SCALE={scale_name}; projects under {scratch}", flush=True)

    made = safely(figures, fig.p8_cold_default, scratch / "default", scale.p8_tiny, scale_name)
    if made is not None:
        project = made[0]
        safely(figures, fig.p3_perturbation_passes, project, scale_name)
        safely(figures, fig.p4_noop, project, scale_name)
        safely(figures, fig.p5_hdf5_read, project, scratch / "npy", scale_name)
        safely(figures, fig.p6_adapter_overhead, project, scale_name)
        safely(figures, fig.p9_dask, project / "data/raw", scratch, scale_name)
        shutil.rmtree(scratch / "npy", ignore_errors=True)
    safely(figures, fig.p7_memory, scratch, *scale.p7_items, scale_name)
    safely(figures, scale_run, scratch, scale, scale_name, outputs)

    for script in scripts():
        print(f"    running bench/{script.name}", flush=True)
        output, took = run_script(script, [], scale_name)
        outputs[f"{script.name} ({took:.0f} s)"] = output

    seconds = time.monotonic() - started
    write_results(BENCH / "RESULTS.md", scale_name, figures, outputs, seconds)
    print(f"\nwhole run {seconds / 60:.1f} min; wrote {BENCH / 'RESULTS.md'}")
    for f in figures:
        print(format_line(f))


if __name__ == "__main__":
    main()
