"""Start-up of every stage script: `python stages/<x>.py --help`, the fixed cost each stage pays per run.

    python bench/stage_startup.py [--repeat 5]

Per stage: the median wall time of `--help` in a fresh process (imports, argparse; no work), the
modules it loaded, and which heavy libraries among them. A stage that loads a framework it does not
use before it has read its params makes every rerun of it slower (issue 25, item 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "tensorflow", "keras", "onnxruntime", "ai_edge_litert", "sklearn", "scipy",
         "cv2", "dask", "distributed", "pandas", "matplotlib", "pycocotools", "h5py", "PIL")
_PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
sys.__stderr__.write(json.dumps({"modules": len(sys.modules),
                                 "heavy": [m for m in %r if m in sys.modules]}) + "\\n")
""" % (HEAVY,)


def startup(stage: Path, repeat: int) -> tuple[float, dict]:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, str(stage), "--help"], cwd=REPO, env=environment, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(stage)], cwd=REPO, env=environment, capture_output=True,
                           text=True, check=True)
    return statistics.median(times), json.loads(probe.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - started
    print(f"| stage | `--help` s (median of {repeat}) | modules loaded | heavy libraries loaded |")
    print("|---|---|---|---|")
    for stage in sorted([*REPO.glob("stages/*.py"), *REPO.glob("stages/detection/*.py")]):
        seconds, probe = startup(stage, repeat)
        print(f"| {stage.relative_to(REPO / 'stages')} | {seconds:.2f} | {probe['modules']} | "
              f"{', '.join(probe['heavy']) or '–'} |")
    print(f"\n(a bare `python -c pass`: {bare:.2f} s)")


if __name__ == "__main__":
    main()
