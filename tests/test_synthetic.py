import csv
import hashlib
import io
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evalstack.demo.cards import (
    CAMERA_TYPES,
    CARD_HEIGHT,
    CARD_WIDTH,
    DRUGS,
    MODEL_CROP,
    PAPER_RGB,
    QUANTITIES,
    REACTION_ZONE,
    REGISTRY_COLUMNS,
    CardSpec,
    drug_barcode,
    encode_png,
    lane_span,
    plan_cards,
    render_card,
    write_dataset,
)

SEED = 0


def _spec(**overrides: object) -> CardSpec:
    fields = dict(
        id=15000, sample_id=50000, sample_name="rifampicin", quantity=100, camera_type="iPhone 11", split="dev"
    )
    fields.update(overrides)
    return CardSpec(**fields)


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(out, 40, SEED, workers=1)
    return out


# ---------------------------------------------------------------------------- constants


def test_public_constants_match_the_real_dataset():
    assert len(DRUGS) == 21 and len(set(DRUGS)) == 21
    assert DRUGS[-1] == "lactose" and all(d == d.lower() for d in DRUGS)
    assert QUANTITIES == (0, 20, 50, 80, 100)
    assert len(CAMERA_TYPES) >= 10
    assert (CARD_WIDTH, CARD_HEIGHT) == (730, 1220)
    assert ",".join(REGISTRY_COLUMNS) == "id,sample_id,sample_name,quantity,camera_type_1,url,hashlib_md5,image_name"
    assert [lane_span(i) for i in (0, 11)] == [(70, 123), (653, 706)]


# ---------------------------------------------------------------------------- rendering


def test_render_size_mode_and_determinism():
    spec = _spec()
    img = render_card(spec, SEED)
    assert img.size == (CARD_WIDTH, CARD_HEIGHT) and img.mode == "RGB"
    assert encode_png(render_card(spec, SEED)) == encode_png(img)


def test_different_id_or_seed_gives_a_different_image():
    base = np.asarray(render_card(_spec(), SEED))
    assert not np.array_equal(base, np.asarray(render_card(_spec(id=15001), SEED)))
    assert not np.array_equal(base, np.asarray(render_card(_spec(), SEED + 1)))


def test_split_does_not_change_pixels():
    dev, test = (np.asarray(render_card(_spec(split=split), SEED)) for split in ("dev", "test"))
    assert np.array_equal(dev, test)


def test_encode_png_round_trips_through_pillow():
    img = render_card(_spec(), SEED)
    data = encode_png(img)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.mode == "RGB" and not decoded.info
    assert np.array_equal(np.asarray(decoded), np.asarray(img))


def test_printed_template_is_identical_outside_the_lanes():
    a = np.asarray(render_card(_spec(sample_name="rifampicin"), SEED, camera=False))
    b = np.asarray(render_card(_spec(id=16000, sample_id=51000, sample_name="lactose", quantity=0), SEED, camera=False))
    outside = np.ones(a.shape[:2], bool)
    outside[320:890, 60:716] = False
    assert np.array_equal(a[outside], b[outside])
    assert (a[outside] < 80).all(axis=1).sum() > 10_000  # fiducials, QR block and letters are printed


def _lane_distance_to_paper(img: Image.Image, lane: int) -> float:
    x0, x1 = lane_span(lane)
    y0, y1 = REACTION_ZONE
    band = np.asarray(img, dtype=float)[y0:y1, x0 + 6 : x1 - 6]
    return float(np.abs(band.mean(axis=(0, 1)) - PAPER_RGB).sum())


def test_lane_colour_grows_with_quantity():
    drug = "rifampicin"
    lane = int(np.argmax(drug_barcode(drug).opacity))
    blank = int(np.flatnonzero(drug_barcode(drug).opacity == 0)[0])
    for sample_id in (50000, 50001, 50002):  # per-sample chemistry noise must not flip the order
        full, none = (
            render_card(_spec(sample_name=drug, quantity=q, sample_id=sample_id), SEED, camera=False) for q in (100, 0)
        )
        d_full, d_none = _lane_distance_to_paper(full, lane), _lane_distance_to_paper(none, lane)
        assert d_full > 60, d_full
        assert 0 < d_none < 0.7 * d_full  # faint but present at quantity 0
        assert _lane_distance_to_paper(full, blank) < d_none


def test_barcodes_are_distinct_with_a_few_near_twins():
    codes = {d: drug_barcode(d) for d in DRUGS}

    def lanes_differing(a: str, b: str) -> int:
        colour = np.any(np.abs(codes[a].colour - codes[b].colour) > 1, axis=1)
        return int(np.sum(colour | (codes[a].opacity != codes[b].opacity)))

    n_diff = {(a, b): lanes_differing(a, b) for i, a in enumerate(DRUGS) for b in DRUGS[i + 1 :]}
    assert min(n_diff.values()) >= 1
    assert 2 <= sum(v <= 2 for v in n_diff.values()) <= 4
    assert drug_barcode("chloroquine") is drug_barcode("chloroquine")  # cached, read-only
    with pytest.raises(ValueError):
        drug_barcode("Chloroquine")


# ---------------------------------------------------------------------------- planning


def test_plan_ids_strata_and_photos_per_sample():
    plan = plan_cards(300, SEED)
    assert [s.id for s in plan] == list(range(15000, 15300))
    assert plan[0].sample_id == 50000
    per_sample: dict[int, list[CardSpec]] = {}
    for s in plan:
        per_sample.setdefault(s.sample_id, []).append(s)
    for photos in list(per_sample.values())[:-1]:  # the last sample may be cut short
        assert 1 <= len(photos) <= 4
        assert len({(p.sample_name, p.quantity, p.split) for p in photos}) == 1
        assert len({p.camera_type for p in photos}) == len(photos)  # different phones
    assert {s.sample_name for s in plan} == set(DRUGS)
    assert {s.quantity for s in plan} == set(QUANTITIES)
    assert plan_cards(300, SEED) == plan and plan_cards(300, SEED + 1) != plan


def test_split_is_grouped_by_sample_and_covers_every_drug_in_dev():
    plan = plan_cards(600, SEED)
    splits: dict[int, set[str]] = {}
    for s in plan:
        splits.setdefault(s.sample_id, set()).add(s.split)
    assert all(len(v) == 1 for v in splits.values())
    test_share = sum(s.split == "test" for s in plan) / len(plan)
    assert 0.1 < test_share < 0.3
    assert {s.sample_name for s in plan if s.split == "dev"} == set(DRUGS)
    assert {s.split for s in plan_cards(200, SEED, test_fraction=0.0)} == {"dev"}


def test_plan_prefix_is_stable():
    short, long = plan_cards(100, SEED), plan_cards(120, SEED)
    assert [s.identity for s in long[:100]] == [s.identity for s in short]
    assert long[:100] == short  # the split is per sample, hence stable too


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError):
        plan_cards(-1, SEED)
    with pytest.raises(ValueError):
        plan_cards(10, SEED, test_fraction=1.0)


def test_image_name_format():
    spec = _spec(id=15588, sample_id=53796, sample_name="ferrous sulfate", quantity=20)
    assert spec.image_name == "15588__53796__ferrous-sulfate__20.png"


# ---------------------------------------------------------------------------- dataset files


def test_registry_files(dataset: Path):
    plan = {s.id: s for s in plan_cards(40, SEED)}
    seen: list[int] = []
    for split in ("dev", "test"):
        header, rows = _read_rows(dataset / f"metadata_{split}.csv")
        assert tuple(header) == REGISTRY_COLUMNS
        assert rows, f"{split} split is empty"
        ids = [int(r["id"]) for r in rows]
        assert ids == sorted(ids)
        for row in rows:
            spec = plan[int(row["id"])]
            assert spec.split == split
            assert (int(row["sample_id"]), row["sample_name"], int(row["quantity"]), row["camera_type_1"]) == (
                spec.sample_id,
                spec.sample_name,
                spec.quantity,
                spec.camera_type,
            )
            name = row["image_name"]
            assert " " not in name
            assert re.fullmatch(r"\d+__\d+__[a-z-]+__(0|20|50|80|100)\.png", name)
            dashed = row["sample_name"].replace(" ", "-")
            assert name == f"{row['id']}__{row['sample_id']}__{dashed}__{row['quantity']}.png"
            assert row["url"] == "images/" + name
            data = (dataset / "images" / name).read_bytes()
            assert hashlib.md5(data).hexdigest() == row["hashlib_md5"]
        seen += ids
    assert sorted(seen) == sorted(plan)
    assert not list(dataset.glob(".*.tmp")) and not list((dataset / "images").glob(".*.tmp"))


def test_written_png_equals_render(dataset: Path):
    spec = plan_cards(40, SEED)[7]
    assert (dataset / "images" / spec.image_name).read_bytes() == encode_png(render_card(spec, SEED))


def test_pool_and_serial_runs_are_identical(tmp_path: Path, dataset: Path):
    write_dataset(tmp_path, 40, SEED, workers=2)
    for name in ("metadata_dev.csv", "metadata_test.csv"):
        assert (tmp_path / name).read_bytes() == (dataset / name).read_bytes()


def test_incremental_growth_keeps_existing_files(tmp_path: Path):
    dev_csv, test_csv = write_dataset(tmp_path, 12, SEED, workers=1, url_prefix="s3://bucket/pad/")
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "images").iterdir()}
    old_rows = _read_rows(dev_csv)[1] + _read_rows(test_csv)[1]
    assert all(r["url"].startswith("s3://bucket/pad/") for r in old_rows)

    write_dataset(tmp_path, 16, SEED, start=12, workers=1, url_prefix="s3://bucket/pad/")
    images = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "images").iterdir()}
    assert len(images) == 16
    assert all(images[name] == mtime for name, mtime in first.items())  # not rewritten
    new_rows = {r["id"]: r for r in _read_rows(dev_csv)[1] + _read_rows(test_csv)[1]}
    assert all(new_rows[r["id"]] == r for r in old_rows)


def test_other_seed_in_same_directory_is_refused(tmp_path: Path):
    write_dataset(tmp_path, 1, SEED, workers=1)
    # Image names carry no seed, so make another seed's first card collide with it.
    old = tmp_path / "images" / plan_cards(1, SEED)[0].image_name
    old.rename(tmp_path / "images" / plan_cards(1, SEED + 1)[0].image_name)
    with pytest.raises(ValueError, match="seed"):
        write_dataset(tmp_path, 1, SEED + 1, workers=1)


def test_start_requires_existing_earlier_images(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        write_dataset(tmp_path, 4, SEED, start=2, workers=1)
    assert not (tmp_path / "metadata_dev.csv").exists()


# ---------------------------------------------------------------------------- difficulty


def _thumbnail(spec: CardSpec) -> np.ndarray:
    img = render_card(spec, SEED).crop(MODEL_CROP).resize((24, 24), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32).ravel() / 255.0


@pytest.mark.slow
def test_linear_classifier_is_good_but_not_perfect():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    plan = plan_cards(400, SEED)
    y = np.array([DRUGS.index(s.sample_name) for s in plan])
    test = np.array([s.split == "test" for s in plan])
    # Multi-threaded BLAS only slows these small problems down (and oversubscribes
    # the pool); forked workers inherit the limit.
    with threadpool_limits(limits=1, user_api="blas"):
        with multiprocessing.get_context("fork").Pool(2) as pool:  # map keeps the order
            x = np.stack(pool.map(_thumbnail, plan, chunksize=10))
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(x[~test], y[~test])
        accuracy = float((clf.predict(x[test]) == y[test]).mean())
    print(f"synthetic PAD difficulty: LogisticRegression test accuracy {accuracy:.3f} on {test.sum()} cards")
    assert 0.5 < accuracy < 1.0
