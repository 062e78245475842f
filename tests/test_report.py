"""The one report (reports/index.html + index.md) and the first screen (`evalstack summary`).

The project here is written by hand in the layout the stages write (data/evaluation,
comparison/, robustness/metrics.json, plots/), so these tests run in seconds; the e2e tests
check the same files come out of a real `dvc repro`.
"""
import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from evalstack.reporting.figures import PlotDataError, load_rows
from evalstack.reporting.report import write_report
from evalstack.reporting.summary import WIDTH, summary_text
from tests.servers import require_program

CLASSIFIERS = {"tflite_cnn": 0.9, "torch_cnn": 0.75, "torch_cnn_onnx": 0.75}
REGRESSORS = {"conc_keras": 18.25, "pls": 21.5}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    models = {name: {"task": "classify", "file": f"models/{name}"} for name in CLASSIFIERS}
    models |= {name: {"task": "concentration", "file": f"models/{name}"} for name in REGRESSORS}
    params = {"fetch": {"source": {"kind": "registry", "registries": {"test": "data/source/metadata_test.csv"}}},
              "models": models, "evaluate": {"split": "test"}, "robustness": {"reference": "tflite_cnn"},
              "store": {"dir": ".evalstack/store"}}
    write(tmp_path / "params.yaml", yaml.safe_dump(params))
    write(tmp_path / "dvc.yaml", "stages: {}\n")
    summary = ["model,task,adapter,pipeline,n_items,accuracy,accuracy_ci_low,accuracy_ci_high,rmse,mae,n_unscored,"
               "latency_ms_per_item"]
    for name, accuracy in CLASSIFIERS.items():
        write(tmp_path / f"data/evaluation/{name}.json",
              json.dumps({"accuracy": accuracy, "macro_f1": accuracy - 0.05, "n_items": 80, "forward_passes": 400}))
        write(tmp_path / f"metrics/{name}.json", json.dumps({name: {"accuracy": accuracy}}))
        write(tmp_path / f"plots/classify/pairs/{name}.csv", "actual,predicted\na,a\na,b\nb,b\nc,a\n")
        write(tmp_path / f"plots/classify/per_class/{name}.csv", "class,accuracy,support\na,0.5,2\nb,1.0,1\nc,0,1\n")
        summary.append(f"{name},classify,x,p,80,{accuracy},{accuracy - 0.07},{accuracy + 0.05},,,0,4.2")
    for name, rmse in REGRESSORS.items():
        write(tmp_path / f"data/evaluation/{name}.json",
              json.dumps({"rmse": rmse, "mae": rmse / 2, "n_items": 80, "n_unscored": 0, "forward_passes": 400}))
        write(tmp_path / f"plots/concentration/pairs/{name}.csv", "actual,predicted\n0,10\n50,45\n100,80\n")
        summary.append(f"{name},concentration,x,p,80,,,,{rmse},{rmse / 2},0,1.5")
    write(tmp_path / "comparison/summary.csv", "\n".join(summary) + "\n")
    write(tmp_path / "comparison/mcnemar.csv", "model_a,model_b,only_a_correct,only_b_correct,method,statistic,p_value\n"
                                               "tflite_cnn,torch_cnn,9,3,exact,3,0.146\n")
    write(tmp_path / "comparison/parity.csv", "model,reference,n_items,argmax_agreement,max_abs_probability_diff\n"
                                              "torch_cnn_onnx,torch_cnn,400,1,3.9e-08\n")
    grid = {"reference": "tflite_cnn", "models": {
        name: {"clean_accuracy": accuracy, "n_items": 80, "mce": 1.0 if name == "tflite_cnn" else 1.2,
               "relative_mce": 1.0 if name == "tflite_cnn" else 1.4,
               "counts": {"cells": 10, "perturbed_forward_passes": 800, "clean_forward_passes": 0},
               "types": {kind: {"accuracy": {str(s): round(accuracy - 0.1 * s, 3) for s in (1, 2, 3, 4, 5)},
                                "flip_rate": {str(s): 0.05 * s for s in (1, 2, 3, 4, 5)}, "ce": 1.0, "relative_ce": 1.0}
                         for kind in ("gaussian_noise", "motion_blur")}}
        for name, accuracy in CLASSIFIERS.items()}}
    write(tmp_path / "robustness/metrics.json", json.dumps(grid))
    return tmp_path


def test_summary_fits_100_columns_and_names_every_models_headline_figures(project: Path):
    text = summary_text(project)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert re.search(r"tflite_cnn \(ref\)\s+0\.900 \[0\.830, 0\.950\]\s+0\.850\s+100\.0\s+100\.0", text), text
    assert re.search(r"torch_cnn\s+0\.750 \[0\.680, 0\.800\]\s+0\.700\s+120\.0\s+140\.0", text), text
    assert re.search(r"conc_keras\s+18\.25\s+9\.12", text), text
    assert "Detection" not in text  # that profile did not run here
    assert "Full report: reports/index.html" in text
    assert len(text.splitlines()) <= 20  # read in ten seconds


def test_summary_of_an_empty_project_says_what_to_run(tmp_path: Path):
    assert "make repro" in summary_text(tmp_path)


def test_summary_includes_detection_when_that_profile_ran(project: Path):
    write(project / "detection/params.yaml", yaml.safe_dump({"models": {"shapes_centernet": {}},
                                                             "evaluate": {"split": "val"}}))
    write(project / "detection/metrics/shapes_centernet.json",
          json.dumps({"mAP": 0.61, "mAP50": 0.88, "n_images": 300, "mPC": 0.41, "rPC": 0.67}))
    write(project / "detection/plots/pr_curve/shapes_centernet.csv", "recall,precision\n0,1\n0.5,0.9\n1,0.2\n")
    text = summary_text(project)
    assert re.search(r"shapes_centernet\s+0\.610\s+0\.880\s+0\.410\s+0\.670", text), text
    assert "Detection (val split, 300 images)" in text
    page = write_report(project).read_text()
    assert "Precision–recall at IoU 0.5" in page and "shapes_centernet" in page


def test_report_is_one_offline_page_with_its_markdown_twin(project: Path):
    page = write_report(project)
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # offline, no CDN
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    markdown = (project / "reports/index.md").read_text()
    linked = re.findall(r"\]\((figures/[^)]+\.png)\)", markdown)
    assert len(images) == len(linked) >= 11
    for name in linked:
        pixels = np.asarray(Image.open(project / "reports" / name).convert("L"), dtype=np.float32)
        assert pixels.std() > 10, name  # something is drawn
    for section in ("Summary", "Model comparison", "McNemar tests", "Robustness under perturbations",
                    "Confusion matrices", "Concentration: predicted vs actual", "Data provenance"):
        assert f"## {section}" in markdown
    # one robustness chart per perturbation type, every model on it; titles name the model
    assert markdown.count("![Accuracy vs severity:") == 2
    assert "Confusion matrix: torch_cnn_onnx" in markdown and "Predicted vs actual quantity: pls" in markdown
    # the comparison has rows for models only
    rows = re.findall(r"^\| (\S+) \| (classify|concentration) \|", markdown, flags=re.M)
    assert [name for name, _ in rows] == [*CLASSIFIERS, *REGRESSORS]
    assert "latency/" not in markdown and "| robustness |" not in markdown
    assert "| tflite_cnn | torch_cnn | 9 | 3 | exact | 0.146 |" in markdown


def test_report_bytes_are_identical_for_identical_inputs(project: Path):
    write_report(project)
    first = {path: path.read_bytes() for path in (project / "reports").rglob("*") if path.is_file()}
    write_report(project)
    assert {path: path.read_bytes() for path in (project / "reports").rglob("*") if path.is_file()} == first


def test_report_drops_figures_of_models_no_longer_declared(project: Path):
    write_report(project)
    assert (project / "reports/figures/confusion_torch_cnn_onnx.png").exists()
    params = yaml.safe_load((project / "params.yaml").read_text())
    del params["models"]["torch_cnn_onnx"]
    write(project / "params.yaml", yaml.safe_dump(params))
    write_report(project)
    assert not (project / "reports/figures/confusion_torch_cnn_onnx.png").exists()


# The page checks itself in a frame: every <img> decoded, and nothing wider than the window.
CHECK_PAGE = """<!DOCTYPE html><html><body><iframe id="r" src="{src}" style="width:{width}px;height:900px"></iframe>
<script>
document.getElementById("r").onload = function () {{
  var doc = this.contentDocument, images = doc.images, broken = [];
  for (var i = 0; i < images.length; i++) if (!(images[i].complete && images[i].naturalWidth > 0)) broken.push(i);
  var wide = [], all = doc.body.getElementsByTagName("*");
  for (var j = 0; j < all.length; j++) {{
    var box = all[j].getBoundingClientRect();
    if (box.right > doc.documentElement.clientWidth + 1 && !all[j].closest(".scroll")) wide.push(all[j].tagName);
  }}
  var out = document.createElement("pre");
  out.id = "result";
  out.textContent = "images=" + images.length + " broken=" + broken.length + " overflowing=" + wide.length +
    " scrollWidth=" + doc.documentElement.scrollWidth + " clientWidth=" + doc.documentElement.clientWidth;
  document.body.appendChild(out);
}};
</script></body></html>"""


def chromium(tmp_path: Path, *args: str) -> str:
    program = require_program("chromium", "chromium")
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    command = [str(program), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--allow-file-access-from-files", "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.parametrize("width", [1280, 820])
def test_report_renders_in_headless_chromium_every_figure_loaded_nothing_overflows(project: Path, width: int):
    page = write_report(project)
    check = project / f"check-{width}.html"
    check.write_text(CHECK_PAGE.format(src=page.as_uri(), width=width))
    dom = chromium(project, "--dump-dom", check.as_uri())
    found = re.search(r"images=(\d+) broken=(\d+) overflowing=(\d+) scrollWidth=(\d+) clientWidth=(\d+)", dom)
    assert found, dom[-2000:]
    images, broken, overflowing, scroll_width, client_width = map(int, found.groups())
    assert images >= 11 and broken == 0 and overflowing == 0 and scroll_width <= client_width
    screenshot = project / f"report-{width}.png"
    chromium(project, f"--window-size={width},2400", f"--screenshot={screenshot}", page.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # a blank page is far below this


def test_plot_rows_from_json_records_or_an_object_holding_them(tmp_path: Path):
    write(tmp_path / "a.json", json.dumps([{"x": 1, "y": 2}]))
    write(tmp_path / "b.json", json.dumps({"rows": [{"x": 1, "y": 2}]}))
    assert load_rows(tmp_path / "a.json") == load_rows(tmp_path / "b.json") == [{"x": 1, "y": 2}]
    write(tmp_path / "c.json", json.dumps({"x": 1}))
    with pytest.raises(PlotDataError, match="not a plot file"):
        load_rows(tmp_path / "c.json")
