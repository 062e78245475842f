"""How a stage ends on an expected failure: one line that says what and how to fix it, no traceback.

evalstack's own errors (a full disk, a damaged layer, a bad param, a refused model file…) carry a
message that names the item and the fix; an 8-frame traceback above it hides that line. Any other
exception is a bug and keeps its traceback. `EVALSTACK_DEBUG=1` keeps tracebacks for all.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
DEBUG_ENV = "EVALSTACK_DEBUG"


class EmptyLockError(RuntimeError):
    """dvc.lock is empty: DVC was killed while it rewrote the file in place."""


def is_expected(error: BaseException) -> bool:
    """An error evalstack raises on purpose (its class is defined in evalstack), with a message for a person."""
    return isinstance(error, Exception) and type(error).__module__.split(".")[0] == "evalstack"


def check_lock_not_empty(start: Path | None = None) -> None:
    """A stage run by hand after DVC was killed at "Updating lock file" (DVC itself then says only
    `validation failed`): name the cause and the fix before any work."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            lock = candidate / "dvc.lock"
            if lock.is_file() and not lock.read_bytes().strip():
                raise EmptyLockError(
                    f"{lock} is empty: DVC was stopped while it rewrote it (\"Updating lock file\"); "
                    "`git checkout dvc.lock` restores the committed one, or delete it and `dvc commit -f` records "
                    "the outputs you have. `evalstack doctor` explains.")
            return


def run_stage(main: Callable[[], T]) -> T:
    """Call a stage's `main`; an expected failure ends the process with one line on stderr and exit 1."""
    try:
        check_lock_not_empty()
        return main()
    except Exception as error:
        if not is_expected(error) or os.environ.get(DEBUG_ENV):
            raise
        name = Path(sys.argv[0]).stem
        print(f"{name}: {type(error).__name__}: {error}\n(traceback: {DEBUG_ENV}=1)", file=sys.stderr)
        sys.exit(1)
