"""Write the README's first screen ("What you see") from a real run: `evalstack summary` of a built project.

    make repro && python tools/readme_first_screen.py            # this checkout
    python tools/readme_first_screen.py --project /tmp/clean-clone   # a fresh clone that ran `make repro`

The block between `<!-- first-screen:start -->` and `<!-- first-screen:end -->` is replaced, so the figures in
the README are what the code gives, never typed by hand. `--check` exits 1 when the README differs instead.
"""
from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- first-screen:start -->", "<!-- first-screen:end -->"


def summary(project: Path) -> str:
    command = [sys.executable, "-m", "evalstack.cli", "summary", "--project", str(project)]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, check=True).stdout.rstrip("\n")


def with_block(readme: str, screen: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} … {END} block")
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n```\n{screen}\n```\n{END}{rest.split(END, 1)[1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=REPO, help="a project that ran `make repro`")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's block differs")
    args = parser.parse_args()
    readme = (REPO / "README.md").read_text()
    updated = with_block(readme, summary(args.project.resolve()))
    if args.check:
        if updated != readme:
            print("README.md's first screen differs from `evalstack summary` of", args.project)
            print("".join(difflib.unified_diff(readme.splitlines(True), updated.splitlines(True), "README.md",
                                               "evalstack summary")))
            return 1
        return 0
    (REPO / "README.md").write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
