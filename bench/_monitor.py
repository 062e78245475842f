"""`dvc repro` with the time and the peak memory of each stage it runs.

Time per stage: from the line where DVC starts the stage to the next one (the rest is "dvc":
start-up, checks, committing outputs). Peak memory: a sampler reads VmHWM (the process's own
high-water mark of resident memory) of every process below `dvc repro` every 50 ms and
charges it to the stage running then: the stage script and whatever it starts (Dask workers,
worker processes). VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
fork/exec, so a stage would inherit DVC's. DVC's own process is reported apart ("dvc").
"""
from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.e2e import env

_HWM = re.compile(r"VmHWM:\s+(\d+) kB")


@dataclass
class StageRun:
    seconds: dict[str, float] = field(default_factory=dict)  # stage → seconds, plus "dvc"
    peak_rss: dict[str, int] = field(default_factory=dict)  # stage → bytes (max over its processes), plus "dvc"
    output: str = ""

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            found = _HWM.search(handle.read())
    except OSError:
        return 0
    return int(found.group(1)) * 1024 if found else 0


def monitored(command: list[str], cwd: Path, interval: float = 0.05) -> StageRun:
    """Run a `dvc repro …` command; its time and peak memory per stage."""
    run = StageRun()
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=cwd, env=env(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: list[tuple[str, float]] = []
    done = threading.Event()
    root = psutil.Process(child.pid)

    def sample() -> None:
        while not done.is_set():
            stage = marks[-1][0] if marks else "dvc"
            run.peak_rss["dvc"] = max(run.peak_rss.get("dvc", 0), _hwm(child.pid))
            try:
                below = root.children(recursive=True)
            except psutil.Error:
                below = []
            for process in below:
                run.peak_rss[stage] = max(run.peak_rss.get(stage, 0), _hwm(process.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.startswith("Running stage '"):
            marks.append((line.split("'")[1], time.monotonic()))
    code = child.wait()
    done.set()
    sampler.join()
    ended = time.monotonic()
    run.output = "".join(lines)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{run.output[-4000:]}")
    run.seconds = {stage: (marks[i + 1][1] if i + 1 < len(marks) else ended) - at for i, (stage, at) in enumerate(marks)}
    run.seconds["dvc"] = (ended - started) - sum(run.seconds.values())
    return run


def stage_line(run: StageRun) -> str:
    """'12.3 s  fetch 4.0 (310 MB)  preprocess@small 5.1 (…)  …'"""
    parts = [f"{stage} {seconds:.1f}" + (f" ({run.peak_rss[stage] / 2**20:.0f} MB)" if stage in run.peak_rss else "")
             for stage, seconds in run.seconds.items()]
    return f"{run.total:7.1f} s  " + "  ".join(parts)
