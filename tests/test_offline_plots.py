"""The offline `dvc plots` template: vega inlined, no CDN, registered in .dvc/config.local only."""
from pathlib import Path

import pytest
from dvc_render.html import render_html
from dvc_render.vega import VegaRenderer

from evalstack.reporting.offline_plots import (
    TEMPLATE_IN_DVC_DIR,
    OfflinePlotsError,
    install_offline_template,
    offline_template,
)


@pytest.fixture(scope="module")
def template() -> str:
    return offline_template()


def test_template_inlines_vega_and_keeps_only_the_placeholders_it_needs(template: str):
    assert template.count("{plot_divs}") == 1
    assert "{scripts}" not in template  # dvc-render would put its CDN <script src=…> tags there
    assert "window.vegaEmbed=" in template
    # one inline script: its only closing tag is the real one
    assert template.count("</script") == 1


def test_dvc_render_page_from_the_template_has_no_network_reference(template: str, tmp_path: Path):
    renderer = VegaRenderer(
        [{"class": "a", "accuracy": 0.5}], "plots/per_class/net.csv", template="bar_horizontal", x="accuracy", y="class"
    )
    (tmp_path / "template.html").write_text(template)  # as `dvc plots show` passes it: a file path
    page = Path(render_html([renderer], tmp_path / "index.html", html_template=tmp_path / "template.html")).read_text()
    assert "cdn.jsdelivr" not in page and "https://cdn" not in page
    assert "vegaEmbed('#plots_per_class_net_csv'" in page
    stock = Path(render_html([renderer], tmp_path / "stock.html")).read_text()
    assert "cdn.jsdelivr" in stock  # what the template replaces


def test_install_writes_under_dvc_tmp_and_sets_the_local_config_only(tmp_path: Path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    analytics = false\n")
    path = install_offline_template(tmp_path)
    assert path == tmp_path / ".dvc" / TEMPLATE_IN_DVC_DIR and "{plot_divs}" in path.read_text()
    assert f"html_template = {TEMPLATE_IN_DVC_DIR}" in (tmp_path / ".dvc/config.local").read_text()
    assert "html_template" not in (tmp_path / ".dvc/config").read_text()  # git-tracked config untouched


def test_install_outside_a_dvc_repo_is_a_clear_error(tmp_path: Path):
    with pytest.raises(OfflinePlotsError, match="not a DVC repository"):
        install_offline_template(tmp_path)
