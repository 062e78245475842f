"""P10 alone: the whole template cold at `--cards` cards, each stage's time and peak memory.

The same project and measure as `make bench`'s P10 (bench/_full.py: every stage of dvc.yaml, `store.link:
hardlink`, DVC `cache.type hardlink`), without P1 and P2 after it: about 25 minutes at 8,001 cards instead of
40. The figure leaves out what only the demo needs (synth, the train stages), reported apart.

    PYTHONPATH=src python bench/p10.py [--cards 8001] [--keep]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _figures import DEMO_STAGE_KINDS  # noqa: E402
from _full import full_project, stage_table  # noqa: E402
from _monitor import monitored, stage_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=8001)
    parser.add_argument("--scratch", type=Path, default=BENCH / "out/p10")
    parser.add_argument("--keep", action="store_true", help="keep the built project (for bench/p1_breakdown.py --project)")
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    project = full_project(args.scratch / f"full{args.cards}", args.cards, tiny=False)
    cold = monitored(["dvc", "repro"], project)
    demo = {stage: seconds for stage, seconds in cold.seconds.items() if stage.split("@")[0] in DEMO_STAGE_KINDS}
    without = cold.total - sum(demo.values())
    print(f"P10 cold `dvc repro` at {args.cards} cards, every stage: {stage_line(cold)}")
    print(f"P10: {without / 60:.2f} min without the demo's {sum(demo.values()):.0f} s "
          f"({', '.join(f'{stage} {seconds:.0f} s' for stage, seconds in demo.items())}); goal ≤ 15 min: "
          f"{'met' if without <= 15 * 60 else 'MISSED'}; every stage {cold.total:.0f} s")
    print("\n".join(["| stage | seconds | share | peak RSS |", "|---|---|---|---|", *stage_table(cold)]))
    if args.keep:
        print(f"kept the project at {project}")
    else:
        shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
