"""The evaluation report draws what dvc.yaml declares, deterministically, and says what it skipped."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from evalstack.reporting.figures import PlotDataError, load_rows
from evalstack.reporting.report import write_report

DVC_YAML = {
    "metrics": ["metrics"],
    "plots": [
        {"plots/confusion": {"template": "confusion", "x": "predicted", "y": "actual", "title": "Confusion"}},
        {"plots/per_class": {"template": "bar_horizontal", "x": "accuracy", "y": "class", "title": "Per class"}},
        {"plots/robustness/net_a.csv": {"x": "severity", "y": "accuracy", "title": "Robustness"}},
        {"plots/broken.csv": {"x": "nope", "y": "accuracy", "title": "Broken"}},
        {"plots/later.csv": {"title": "Not yet"}},
        {"reports/models.csv": {"template": "bar_horizontal", "x": "accuracy", "y": "model"}},
    ],
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    for model, accuracy in (("net_a", 0.75), ("net_b", 0.5)):
        metrics = {"accuracy": accuracy, "macro_f1": accuracy / 2, "n_items": 4}
        write(tmp_path / f"metrics/{model}.json", json.dumps(metrics))
        write(tmp_path / f"plots/confusion/{model}.csv", "actual,predicted\na,a\na,b\nb,b\nc,a\n")
        write(tmp_path / f"plots/per_class/{model}.csv", "class,accuracy,support\na,0.5,2\nb,1.0,1\nc,0.0,1\n")
    write(tmp_path / "plots/confusion/.gitignore", "/net_a.csv\n")  # what DVC leaves beside cached plots
    write(tmp_path / "plots/robustness/net_a.csv", "severity,accuracy\n0,0.9\n1,0.7\n2,0.4\n")
    write(tmp_path / "plots/broken.csv", "severity,accuracy\n0,0.9\n")
    return tmp_path


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_report_has_the_metrics_table_and_a_figure_per_declared_plot_file(repo: Path):
    report = write_report(repo, Path("reports"), ["accuracy", "macro_f1"])
    text = report.read_text()
    assert "| net_a | 0.7500 | 0.3750 | 4 |" in text  # compared metrics first, then the rest
    table = (repo / "reports/models.csv").read_text()
    assert table == "model,accuracy,macro_f1,n_items\nnet_a,0.75,0.375,4\nnet_b,0.5,0.25,4\n"
    figures = sorted(path.name for path in (repo / "reports/figures").iterdir())
    assert figures == [
        "model_comparison.png",
        "plots_confusion_net_a.png", "plots_confusion_net_b.png",
        "plots_per_class_net_a.png", "plots_per_class_net_b.png",
        "plots_robustness_net_a.png",
    ]
    for name in figures:
        assert f"figures/{name}" in text
        pixels = np.asarray(Image.open(repo / "reports/figures" / name).convert("L"), dtype=np.float32)
        assert pixels.std() > 10, name  # something is drawn
    assert "`plots/broken.csv`: not drawn" in text and "['nope']" in text
    assert "`plots/later.csv`: declared, not produced yet" in text
    assert ".gitignore" not in text


def test_report_bytes_are_identical_for_identical_inputs(repo: Path):
    write_report(repo, Path("reports"), ["accuracy"])
    first = {path: path.read_bytes() for path in (repo / "reports").rglob("*") if path.is_file()}
    write_report(repo, Path("reports"), ["accuracy"])
    assert {path: path.read_bytes() for path in (repo / "reports").rglob("*") if path.is_file()} == first


def test_report_without_metrics_says_so(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {}}))
    text = write_report(tmp_path, Path("reports"), ["accuracy"]).read_text()
    assert "No metrics files found" in text and "Model comparison" not in text


def test_plot_rows_from_json_records_or_an_object_holding_them(tmp_path: Path):
    records = [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
    write(tmp_path / "a.json", json.dumps(records))
    write(tmp_path / "b.json", json.dumps({"train": records}))
    assert load_rows(tmp_path / "a.json") == load_rows(tmp_path / "b.json") == records
    write(tmp_path / "c.json", json.dumps({"loss": 0.5}))
    with pytest.raises(PlotDataError, match="c.json"):
        load_rows(tmp_path / "c.json")
