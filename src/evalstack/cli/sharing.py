"""Share the run-cache in full: the run records and the outputs they restore.

`dvc push --run-cache` uploads run records but not the outputs they point to. Outputs
of the committed pipeline go up with `dvc push`, but two kinds never do: outputs of
runs that are not in any pushed commit (a param value tried and reverted), and
`cache: false` outputs such as metrics/*.json, which live in git. A colleague's
`dvc repro --pull` then finds a matching record, cannot fetch its outputs, and runs
the stage again. This pushes every record together with every output it restores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunCachePush:
    records: int  # run records uploaded (DVC re-sends all of them every time)
    outputs: int  # output objects uploaded (those the remote already had are skipped)
    unavailable: int  # objects a record points to that this cache no longer has (gc'd)


def run_cache_records(runs_dir: Path) -> list[tuple[str, str]]:
    """(stage key, run key) of every record under .dvc/cache/runs/<xx>/<stage key>/<run key>."""
    return sorted((path.parent.name, path.name) for path in runs_dir.glob("*/*/*") if path.is_file())


def push_run_cache(repo_root: Path, remote: str | None = None, jobs: int | None = None) -> RunCachePush:
    """Upload all run records of this clone and the outputs they restore to `remote` (default: core.remote)."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo, repo.lock:
        records = repo.stage_cache.push(remote)
        runs_dir = Path(repo.cache.legacy.path) / "runs"
        used = repo.stage_cache.get_used_objs(run_cache_records(runs_dir))
        objects = set().union(*used.values()) if used else set()
        result = repo.cloud.push(objects, jobs=jobs, remote=remote)
    return RunCachePush(records=len(records), outputs=len(result.transferred), unavailable=len(result.failed))
