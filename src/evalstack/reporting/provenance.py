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
        failed = report.get("failed") or []
        if failed and report.get("on_error") == "skip":
            shown = "; ".join(f"id {f.get('id')} ({f.get('cause')})" for f in failed[:10] if isinstance(f, dict))
            more = f"; … and {len(failed) - 10} more" if len(failed) > 10 else ""
            lines.append(f"Skipped (on_error: skip, all listed in data/fetch_report.json): {shown}{more}.")
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
    """One row per layer under data/: what its last build here computed, reused and seeded.

    A model's robustness cells (one layer per type × severity) are summed into one row, so the
    table stays a screen long however large the grid is.
    """
    store = _store(results)
    if store is None:
        return []
    groups: dict[str, list[dict]] = {}
    for index in sorted((results.root / "data").glob("**/index.json")):
        layer = index.parent
        record = store.load_build(layer)
        if record is None:
            continue
        name = str(layer.relative_to(project))
        if layer.parent.parent.name == "robustness":
            name = str(layer.parent.relative_to(project)) + "/*"
        groups.setdefault(name, []).append(record)
    rows = []
    for name, records in groups.items():
        def total(key: str) -> int:
            return sum(int((record.get("counts") or {}).get(key, 0) or 0) for record in records)

        items = total("items_computed") + total("items_reused") or sum(int(r.get("n_items") or 0) for r in records)
        label = name if len(records) == 1 and not name.endswith("/*") else f"{name} ({len(records)} cells)"
        rows.append([label, str(items), str(total("shards")), str(total("shards_computed")),
                     str(total("shards_reused")), str(total("shards_seeded")),
                     max(str(r.get("finished_at", ""))[:19].replace("T", " ") for r in records)])
    return rows
