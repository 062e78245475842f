"""The report's provenance section: where the items came from, how many, and what the last run reused."""
from __future__ import annotations

from pathlib import Path

from evalstack.cache.shardstore import ShardStore, StoreConfig
from evalstack.reporting.results import ProfileResults, read_json


def source_lines(results: ProfileResults) -> list[str]:
    """The declared source and the item counts fetch recorded (data/fetch_report.json or the raw index)."""
    fetch = results.params.get("fetch") or {}
    lines = []
    source = fetch.get("source")
    if isinstance(source, dict):
        kind = source.get("kind", "registry")
        where = {"registry": lambda s: ", ".join(f"{k}: `{v}`" for k, v in (s.get("registries") or {}).items()),
                 "pad_api": lambda s: f"`{s.get('url')}`" + (f", project {s['project']}" if s.get("project") else ""),
                 "folder": lambda s: f"`{s.get('folder')}`"}.get(kind, lambda s: str(s))(source)
        lines.append(f"Source: **{kind}** ({where}).")
    elif isinstance(fetch.get("splits"), dict):
        splits = ", ".join(f"{name}: `{entry.get('annotations')}`" for name, entry in fetch["splits"].items())
        lines.append(f"Source: **COCO** ({splits}).")
    report = read_json(results.root / "data/fetch_report.json")
    if isinstance(report, dict) and isinstance(report.get("counts"), dict):
        counts = report["counts"]
        text = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in counts.items())
        offline = " — fetched OFFLINE: the previous raw layer was kept" if report.get("offline") else ""
        lines.append(f"Fetch counts: {text}{offline}.")
    raw = read_json(results.root / "data/raw/index.json")
    if isinstance(raw, dict):
        lines.append(f"Raw layer: {raw.get('n_items', '?')} items in {len(raw.get('shards') or [])} shards.")
    return lines


def _store(results: ProfileResults) -> ShardStore | None:
    directory = (results.params.get("store") or {}).get("dir")
    if not directory:
        return None
    path = Path(directory).expanduser()
    return ShardStore(StoreConfig(path if path.is_absolute() else results.root / path, 0))


def layer_builds(results: ProfileResults, project: Path) -> list[list[str]]:
    """One row per layer under data/: what its last build here computed, reused and seeded."""
    store = _store(results)
    if store is None:
        return []
    rows = []
    for index in sorted((results.root / "data").glob("**/index.json")):
        layer = index.parent
        record = store.load_build(layer)
        if record is None:
            continue
        counts = record.get("counts") or {}
        rows.append([
            str(layer.relative_to(project)),
            str(counts.get("items_computed", 0) + counts.get("items_reused", 0) or record.get("n_items", "")),
            str(counts.get("shards", "")),
            str(counts.get("shards_computed", "")),
            str(counts.get("shards_reused", "")),
            str(counts.get("shards_seeded", "")),
            str(record.get("finished_at", ""))[:19].replace("T", " "),
        ])
    return rows
