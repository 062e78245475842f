"""evalstack: cached, versioned evaluation of image models on DVC + HDF5 layers.

The version is the installed distribution's (`importlib.metadata.version("evalstack")`).

The code that runs is the checkout's own. One environment may serve several clones (a venv whose
editable install points at the first clone's `src/`): a stage of the second clone would then import
the first clone's code while DVC records the second clone's `src/` as the stage's deps, so its outputs
would come from other code with exit 0. So when a stage script (`stages/….py`) or the `evalstack`
command runs inside a checkout whose `src/evalstack` is not this package, that checkout's package
replaces this one before anything else is imported from it, and the checkout's `src/` goes first on
the import path, for the packages of yours beside it.
"""
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path


def _running_checkout() -> _Path | None:
    """`src/evalstack` of the checkout the running stage script (or, for the `evalstack` command, the current
    folder) is in; None for anything else (a notebook, pytest, `python -c`), whose path the user chose."""
    script = _Path(_sys.argv[0]) if _sys.argv and _sys.argv[0] else None
    if script is None or "site-packages" in script.parts:
        return None
    if script.suffix == ".py":
        start = script.resolve().parent
    elif script.name == "evalstack":
        start = _Path.cwd()
    else:
        return None
    for folder in (start, *start.parents):
        if (folder / "src" / "evalstack" / "__init__.py").is_file():
            return (folder / "src" / "evalstack").resolve()
    return None


def _use_checkout(package: _Path) -> None:
    spec = _util.spec_from_file_location(__name__, package / "__init__.py", submodule_search_locations=[str(package)])
    module = _util.module_from_spec(spec)
    _sys.modules[__name__] = module  # `import evalstack` returns what sys.modules holds once this file ends
    spec.loader.exec_module(module)


_checkout = _running_checkout()
if _checkout is not None and _checkout != _Path(__file__).resolve().parent:
    # The checkout's other packages too (your pipeline or adapter in src/lab): under `dvc exp run --temp` or
    # `--queue` the stage runs in a copy whose deps are the copy's files, not the workspace's.
    _sys.path.insert(0, str(_checkout.parent))
    _use_checkout(_checkout)
