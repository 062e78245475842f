"""Per-shard reuse across machines through `store.url` (an S3 bucket on moto), end to end.

Clone A runs `dvc repro` with its shard store backed by the bucket. Clone B, on another
path with an empty `store.dir` and no `dvc pull`, reaches the same bucket through a DVC
remote's config (`store.remote`) and reuses every derived shard by key: its build
records count 0 items computed for preprocess and infer, and its outputs equal A's.
Clone C, on a branch with 10 % more cards, reads only the new cards from the source and
preprocesses only the shards they land in.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from evalstack.cache.objectstore import ObjectStore, ObjectStoreConfig
from tests.e2e import build_record, clone, commit_and_push, make_project, output_digests, run, set_param, stages_run
from tests.servers import moto_s3

pytestmark = pytest.mark.slow  # two `dvc repro`s: ~75 s on 2 cores

DERIVED = ("data/preprocessed", "data/predictions")
# two models on two pipelines (synth, fetch, preprocess, train/fit, infer): the whole pipeline
# would add only evaluate/robustness stages, three times the run time and nothing this tests
TARGETS = ("infer@torch_cnn", "infer@pls")


def derived_layers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for top in DERIVED for p in (root / top).iterdir() if p.is_dir())


def test_a_second_clone_reuses_every_derived_shard_from_the_bucket_without_dvc_pull(tmp_path: Path, monkeypatch):
    with moto_s3() as s3:
        origin = tmp_path / "origin.git"
        run(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin))
        url = f"s3://{s3.bucket}/shards"
        a = make_project(tmp_path / "a", {"store": {"url": url, "endpointurl": s3.url}})
        run(a, "git", "remote", "add", "origin", str(origin))
        # clone A's credentials come from the environment, as boto finds them
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        run(a, "dvc", "repro", *TARGETS)
        layers = derived_layers(a)
        assert len(layers) >= 4
        assert all(build_record(a, layer)["counts"]["items_computed"] > 0 for layer in layers)
        commit_and_push(a, "repro with the shard store on S3")
        assert "secret" not in (a / "dvc.lock").read_text() and s3.secret not in (a / "params.yaml").read_text()

        # clone B: another path, an empty store.dir, credentials only in its DVC remote's local config
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        (tmp_path / "elsewhere").mkdir()
        b = clone(origin, tmp_path / "elsewhere/b")
        run(b, "dvc", "remote", "add", "team", f"s3://{s3.bucket}/dvc")
        for option, value in (("endpointurl", s3.url), ("access_key_id", s3.key_id),
                              ("secret_access_key", s3.secret)):
            run(b, "dvc", "remote", "modify", "--local", "team", option, value)
        params = yaml.safe_load((b / "params.yaml").read_text())
        params["store"].update({"endpointurl": "", "remote": "team"})  # store.* is no dvc.yaml param: nothing reruns for it
        (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert not (b / ".evalstack").exists()
        ran = stages_run(run(b, "dvc", "repro", *TARGETS).stdout)
        assert {"fetch", "preprocess@thumb64", "infer@pls"} <= ran  # nothing was pulled: DVC reruns the stages
        for layer in layers:
            counts = build_record(b, layer)["counts"]
            assert (counts["items_computed"], counts["shards_computed"]) == (0, 0), (layer, counts)
            assert counts["shards_reused"] > 0
        digests_a, digests_b = output_digests(a), output_digests(b)
        assert {k: v for k, v in digests_b.items() if k.startswith(DERIVED)} == \
            {k: v for k, v in digests_a.items() if k.startswith(DERIVED)}
        stored = ObjectStore(ObjectStoreConfig(url, endpointurl=s3.url,
                                               credentials={"access_key_id": s3.key_id, "secret_access_key": s3.secret}))
        records = stored.fs.find(f"{stored.root}/shards")
        assert records and all(json.loads(stored.fs.cat_file(p))["sha256"] for p in records[:3])

        # clone C: a third path, an empty store.dir, a branch with 10 % more cards, still no `dvc pull`. Fetch
        # plans from the raw layer A published in the bucket: only the new cards are read from the source, and
        # preprocess computes only the shards they land in. (Infer is left out: the demo models are retrained on
        # the grown dev split, so every prediction changes; a user's own model would reuse them by key.)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
        (tmp_path / "third").mkdir()
        c = clone(origin, tmp_path / "third/c")
        run(c, "git", "checkout", "-q", "-b", "more-cards")
        n_cards = yaml.safe_load((c / "params.yaml").read_text())["synth"]["n_cards"]
        grown = n_cards + n_cards // 10
        set_param(c, "synth.n_cards", grown)
        assert not (c / ".dvc/cache").exists() and not (c / ".evalstack").exists()  # nothing pulled, no store
        out = run(c, "dvc", "repro", "preprocess@thumb64").stdout
        fetched = re.search(r"raw layer: (\d+) items in \d+ shards \((.*)\)", out)
        assert fetched is not None, out
        activity = dict(part.rsplit(" ", 1) for part in fetched.group(2).split(", "))
        assert (int(fetched.group(1)), int(activity["downloaded"])) == (grown, grown - n_cards), activity
        before = {s["sha256"] for s in json.loads((a / "data/raw/index.json").read_text())["shards"]}
        raw = json.loads((c / "data/raw/index.json").read_text())["shards"]
        new = {s["name"]: s["n_items"] for s in raw if s["sha256"] not in before}
        assert 1 <= len(new) <= 2, new
        record = build_record(c, "data/preprocessed/thumb64")
        assert {s["name"] for s in record["shards"] if s["computed"]} == set(new)
        assert record["counts"]["items_computed"] == sum(new.values()) < grown

