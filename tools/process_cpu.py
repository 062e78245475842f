"""Where a command's CPU goes, process by process: the measure behind bench/RESULTS.md's "Where the CPU goes".

    python tools/process_cpu.py -- .venv/bin/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder
    python tools/process_cpu.py --summarise /tmp/process_cpu.jsonl     # a log written earlier

For the length of the command, a `.pth` file in the venv's site-packages makes every Python process that
starts from this venv (the `dvc` CLI, stage scripts, test workers, their children) append its own user +
system CPU time, argv and the frameworks it imported to a log when it ends: at exit, and through
`os._exit`, which the model adapters leave by. The file is removed when the command ends. Processes that
are not Python (git, sshd, chromium) or that are killed are not in the log.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

HOOK_NAME = "zz_evalstack_process_cpu.pth"
FRAMEWORKS = ("torch", "tensorflow", "onnxruntime", "ai_edge_litert", "dask", "dvc")

# One line, as a .pth file requires: logs only when EVALSTACK_PROCESS_CPU names the log. Once per process:
# Python 3.11's site can run a venv's .pth files twice (from site.venv(), then again from site.main()); the
# venv made on 2026-12-06 did, and every process was logged twice until the hook checked for itself.
_HOOK = ("import os, sys; exec({code!r}, {{}}) if os.environ.get('EVALSTACK_PROCESS_CPU') "
         "and not hasattr(sys, '_evalstack_process_cpu') else None\n")
_CODE = """
import atexit, json, os, resource, sys
sys._evalstack_process_cpu = True
def _evalstack_cpu_dump(_state={'done': False}):
    if _state['done']:
        return
    _state['done'] = True
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {'argv': sys.argv[:3], 'cpu': usage.ru_utime + usage.ru_stime,
              'frameworks': [m for m in %r if m in sys.modules]}
    with open(os.environ['EVALSTACK_PROCESS_CPU'], 'a') as log:
        log.write(json.dumps(record) + '\\n')
atexit.register(_evalstack_cpu_dump)
_evalstack_exit = os._exit
def _exit(code):
    _evalstack_cpu_dump()
    _evalstack_exit(code)
os._exit = _exit
""" % (FRAMEWORKS,)


def category(record: dict) -> str:
    """Which kind of process a log record is, for the table."""
    first = Path(record["argv"][0]).name if record["argv"] else ""
    frameworks = record["frameworks"]
    if first == "dvc":
        return "the dvc CLI"
    if first == "-c" and "dvc" in frameworks:
        return "pytest workers (in-process tests)"
    if first.endswith(".py") and first != "__main__.py":
        for framework in ("torch", "tensorflow"):
            if framework in frameworks:
                return f"scripts that import {framework}"
        return "scripts, no torch or tensorflow"
    return "other (evalstack CLI, Dask, spawned children, python -c)"


def summarise(log: Path) -> str:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    total = sum(r["cpu"] for r in records) or 1.0
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for record in records:
        by_kind[category(record)].append(record["cpu"])
    lines = [f"{len(records)} processes, {total:.0f} s of CPU", "", "| processes | CPU s | share | count |",
             "|---|---|---|---|"]
    for kind, times in sorted(by_kind.items(), key=lambda item: -sum(item[1])):
        lines.append(f"| {kind} | {sum(times):.0f} | {100 * sum(times) / total:.0f} % | {len(times)} |")
    return "\n".join(lines)


def run_with_hook(command: list[str], log: Path) -> int:
    hook = Path(sysconfig.get_paths()["purelib"]) / HOOK_NAME
    hook.write_text(_HOOK.format(code=_CODE))
    log.unlink(missing_ok=True)
    try:
        return subprocess.run(command, env={**os.environ, "EVALSTACK_PROCESS_CPU": str(log)}).returncode
    finally:
        hook.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, default=Path("/tmp/process_cpu.jsonl"))
    parser.add_argument("--summarise", type=Path, help="only summarise this log")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    code = run_with_hook(command, args.log)
    print(summarise(args.log))
    sys.exit(code)


if __name__ == "__main__":
    main()
