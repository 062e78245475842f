"""Where an eval-only rerun's time goes (P1's cause, measured): DVC around the stages vs the stage processes.

    python bench/p1_breakdown.py [--project DIR] [--cards N]

Builds the default template (or reuses a built one at --project), then changes `evaluate.split`
and times `dvc repro evaluate` (what bench/_full.py's P1 times at 8,001 cards: one stage evaluating
every model). Then, with the same inputs in place, it times the evaluate stage's command run
directly (`python stages/evaluate.py …`, as DVC runs it), and the same command's `--help` (the
process start-up and imports alone). DVC's part is the rerun minus the stage processes. Each
figure is the median of --repeat runs; between runs the split is toggled so DVC reruns the stages
(`--no-run-cache`: the run-cache would restore them instead).
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO)]

from tests.e2e import env, make_project, run, set_param  # noqa: E402

TARGETS = ("evaluate",)


def timed(project: Path, *command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=project, env=env(project), check=True, capture_output=True)
    return time.perf_counter() - started


def stage_commands(project: Path) -> dict[str, list[str]]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {name: shlex.split(lock[name]["cmd"]) for name in TARGETS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("/tmp/evalstack-p1"))
    parser.add_argument("--cards", type=int, default=0, help="synth.n_cards (0: params.yaml's default)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    project = args.project
    if not (project / "dvc.lock").exists():
        overrides = {"synth": {"n_cards": args.cards}} if args.cards else {}
        make_project(project, overrides, tiny=False)
        started = time.perf_counter()
        run(project, "dvc", "repro")
        print(f"cold `dvc repro` of the default template: {time.perf_counter() - started:.1f} s")
    reruns, processes, startups = [], {name: [] for name in TARGETS}, {name: [] for name in TARGETS}
    split = "test"
    for _ in range(args.repeat):
        split = "dev" if split == "test" else "test"
        set_param(project, "evaluate.split", split)
        reruns.append(timed(project, "dvc", "repro", "--no-run-cache", *TARGETS))
        for name, command in stage_commands(project).items():
            processes[name].append(timed(project, *[sys.executable if c == "python" else c for c in command]))
            script = next(c for c in command if c.endswith(".py"))
            startups[name].append(timed(project, sys.executable, script, "--help"))
    rerun = statistics.median(reruns)
    stage_total = sum(statistics.median(times) for times in processes.values())
    print(f"eval-only rerun (`dvc repro --no-run-cache {' '.join(TARGETS)}`), median of {args.repeat}: {rerun:.2f} s")
    for name in TARGETS:
        print(f"  {name}: its command alone {statistics.median(processes[name]):.2f} s, of which start-up "
              f"(`--help`) {statistics.median(startups[name]):.2f} s")
    print(f"  the stage processes: {stage_total:.2f} s ({stage_total / rerun:.0%}); DVC around them "
          f"(start-up, graph, hashing deps and outs, lock and run-cache writes): {rerun - stage_total:.2f} s "
          f"({(rerun - stage_total) / rerun:.0%})")
    noop = statistics.median(timed(project, "dvc", "repro", *TARGETS) for _ in range(args.repeat))
    print(f"  a no-op `dvc repro {' '.join(TARGETS)}` (nothing to run): {noop:.2f} s")


if __name__ == "__main__":
    main()
